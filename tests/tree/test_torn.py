"""A file that changes while it is read is read again, or reported and left out: never torn."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina.store.repository import Store
from lamina.tree import scan as scan_mod
from lamina.tree.cache import FilesCache
from lamina.tree.model import Entry, decode_tree
from lamina.tree.restore import restore_tree
from lamina.tree.scan import Scanner
from lamina.tree.scan_read import READ_TRIES

from .treeutil import MIB, MTIME, scan_tree, set_mtime, write

V1 = b"version one. " * 1000
V2 = b"VERSION TWO! " * 1000  # same size as V1


def patch_chunking(
    monkeypatch: pytest.MonkeyPatch, victim: bytes, between: Callable[[int], None]
) -> list[int]:
    """Run ``between(try_number)`` after each read of ``victim``, before its second fstat."""
    tries: list[int] = []
    real = Scanner._chunk_fd

    def chunk_fd(
        self: Scanner, fd: int, st: os.stat_result, add: object, settle: object
    ) -> list[bytes | int]:
        content = real(self, fd, st, add, settle)  # type: ignore[arg-type]
        if os.readlink(f"/proc/self/fd/{fd}").encode().endswith(victim):
            tries.append(len(tries) + 1)
            between(len(tries))
        return content

    monkeypatch.setattr(Scanner, "_chunk_fd", chunk_fd)
    return tries


def entries(store: Store, tid: bytes) -> dict[bytes, Entry]:
    return {e.name: e for e in decode_tree(store.get(tid))}


@pytest.mark.parametrize("how", ["append", "rewrite-same-size"])
def test_file_changed_during_first_read_is_read_again(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    src = tmp_path / "src"
    victim = write(src / "victim", V1, MTIME)
    write(src / "bystander", b"calm\n", MTIME)

    def change(n: int) -> None:
        if n != 1:
            return
        if how == "append":
            with open(victim, "ab") as f:
                f.write(b"appended while read\n")
        else:
            # same size and an explicit new mtime: only mtime/ctime tell the versions apart
            victim.write_bytes(V2)
            set_mtime(victim, MTIME + 1_000_000_000)

    tries = patch_chunking(monkeypatch, b"/victim", change)
    tid, stats = scan_tree(store, src)
    assert tries == [1, 2]
    assert stats.errors == []
    final = victim.read_bytes()
    e = entries(store, tid)[b"victim"]
    assert e.size == len(final)
    assert e.mtime == os.stat(victim).st_mtime_ns
    assert b"".join(store.get(c) for c in e.chunk_ids()) == final
    monkeypatch.undo()
    restore_tree(store, tid, tmp_path / "out")
    assert (tmp_path / "out" / "victim").read_bytes() == final


def test_file_that_keeps_changing_is_reported_and_left_out(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    victim = write(src / "victim", V1, MTIME)
    write(src / "bystander", b"calm\n", MTIME)

    def change(n: int) -> None:
        with open(victim, "ab") as f:
            f.write(b"more %d\n" % n)

    tries = patch_chunking(monkeypatch, b"/victim", change)
    cache = FilesCache(tmp_path / "cache.db", store.keys.store_id, store.catalog.gc_epoch())
    tid, stats = scan_tree(store, src, cache=cache)
    assert len(tries) == READ_TRIES
    assert len(stats.errors) == 1
    assert "victim" in stats.errors[0] and "changed while being read" in stats.errors[0]
    assert stats.files == 1 and stats.files_read == 1
    assert list(entries(store, tid)) == [b"bystander"]
    # never cached: the next scan must read it again
    cache.commit(store.catalog.gc_epoch())
    assert set(cache.directory(b"")) == {b"bystander"}
    cache.close()
    monkeypatch.undo()
    restore_tree(store, tid, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["bystander"]


def test_big_file_changed_between_pieces_is_not_stored_torn(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change in the middle of the reads (after the first read) of a multi-chunk file."""
    src = tmp_path / "src"
    first_half = os.urandom(3 * MIB)
    victim = write(src / "big", first_half + os.urandom(3 * MIB), MTIME)
    new_second_half = os.urandom(3 * MIB)
    real_preadv = scan_mod.os.preadv
    done = []

    def preadv(fd: int, buffers: list[memoryview], off: int) -> int:
        n = real_preadv(fd, buffers, off)
        if not done:
            done.append(1)
            with open(victim, "r+b") as f:  # same size; the data read above is now stale
                f.seek(3 * MIB)
                f.write(new_second_half)
            set_mtime(victim, MTIME + 5)
        return n

    monkeypatch.setattr(scan_mod.os, "preadv", preadv)
    tid, stats = scan_tree(store, src)
    monkeypatch.undo()
    assert stats.errors == []
    e = entries(store, tid)[b"big"]
    assert b"".join(store.get(c) for c in e.chunk_ids()) == first_half + new_second_half
    assert e.mtime == MTIME + 5


def test_file_replaced_by_a_fifo_before_it_is_read_does_not_hang_the_scan(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the listing (lstat) and the read, a file becomes a FIFO nobody writes to."""
    src = tmp_path / "src"
    victim = write(src / "victim", b"regular", MTIME)
    write(src / "other", b"other", MTIME)
    real = Scanner._read_all

    def read_all(self: Scanner, files: list) -> set[int]:  # type: ignore[type-arg]
        if victim.exists() and not victim.is_fifo():
            victim.unlink()
            os.mkfifo(victim)
        return real(self, files)

    monkeypatch.setattr(Scanner, "_read_all", read_all)
    result: list[object] = []

    def run() -> None:
        try:
            result.append(scan_tree(store, src))
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)  # a hang guard: a scan that opened the FIFO would wait forever
    if t.is_alive():
        # unblock the stuck open() so the thread can finish, then fail
        fd = os.open(victim, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(10)
        pytest.fail("the scan hung opening a FIFO that replaced a regular file")
    (res,) = result
    assert not isinstance(res, BaseException), res
    tid, stats = res  # type: ignore[misc]
    assert len(stats.errors) == 1 and "victim" in stats.errors[0]
    assert list(entries(store, tid)) == [b"other"]
