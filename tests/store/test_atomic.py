"""store/atomic.py: the one atomic write (temp, fsync, rename, fsync of the folder)."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest

from lamina.store import atomic
from lamina.store.atomic import write_atomic


def test_writes_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "f"
    write_atomic(p, b"one", 0o640)
    assert p.read_bytes() == b"one" and (p.stat().st_mode & 0o777) == 0o640
    write_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


def test_exclusive_never_replaces(tmp_path: Path) -> None:
    p = tmp_path / "keys.json"
    write_atomic(p, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(p, b"second", exclusive=True)
    assert p.read_bytes() == b"first" and os.listdir(tmp_path) == ["keys.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between write and rename (here: fsync fails) leaves the old bytes whole."""
    p = tmp_path / "state.json"
    write_atomic(p, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        write_atomic(p, b"new" * 1000)
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize(
    "size", [0, 1, 4095, 4096, atomic.DIRECT_MIN - 1, atomic.DIRECT_MIN, 3 * 2**20 + 12345]
)
def test_every_size_is_written_whole(tmp_path: Path, size: int) -> None:
    """Small files through the page cache, large ones around it where the filesystem
    allows: the bytes read back are the bytes given, whichever way they went."""
    data = os.urandom(size)
    write_atomic(tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data


class _Recorder:
    """Records what ``write_atomic`` does to its file: direct mode turned on and off,
    and each write's length, with the mode it went in and whether it came from an
    aligned buffer of ``atomic``'s."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse: bool = False) -> None:
        self.events: list[tuple[str, int, bool]] = []
        self.direct = False
        real_write = os.write

        def set_direct(fd: int, on: bool) -> bool:
            self.events.append(("direct", int(on), False))
            if refuse and on:
                return False
            self.direct = on
            return True

        def write(fd: int, data: memoryview) -> int:
            from_pool = isinstance(getattr(data, "obj", None), mmap.mmap)
            self.events.append(
                ("write" if not self.direct else "write-direct", len(data), from_pool)
            )
            return real_write(fd, data)

        monkeypatch.setattr(atomic, "_set_direct", set_direct)
        monkeypatch.setattr(atomic.os, "write", write)


def test_a_large_file_is_written_around_the_page_cache_from_an_aligned_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack's aligned head goes in direct writes from one of the module's page-aligned
    buffers, its tail (under one block) through the page cache once direct mode is off."""
    rec = _Recorder(monkeypatch)
    data = os.urandom(3 * 2**20 + 123)
    write_atomic(tmp_path / "pack", data)
    assert (tmp_path / "pack").read_bytes() == data
    head = 3 * 2**20
    assert rec.events == [
        ("direct", 1, False),
        ("write-direct", head, True),
        ("direct", 0, False),
        ("write", 123, False),
    ]


def test_a_small_file_never_asks_for_direct_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _Recorder(monkeypatch)
    write_atomic(tmp_path / "state.json", b"x" * (atomic.DIRECT_MIN - 1))
    assert rec.events == [("write", atomic.DIRECT_MIN - 1, False)]


def test_a_filesystem_that_refuses_direct_writes_gets_the_bytes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _Recorder(monkeypatch, refuse=True)
    data = os.urandom(2 * 2**20 + 5)
    write_atomic(tmp_path / "pack", data)
    assert (tmp_path / "pack").read_bytes() == data
    assert rec.events == [("direct", 1, False), ("write", len(data), False)]


def test_a_direct_write_refused_midway_goes_on_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EINVAL from a direct write (a device with larger blocks) writes nothing: the
    same bytes follow through the page cache, whole and in order."""
    real_write = os.write
    calls: list[int] = []

    def write(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(atomic.os, "write", write)
    data = os.urandom(atomic.DIRECT_MIN + 4096 + 7)
    write_atomic(tmp_path / "pack", data)
    assert (tmp_path / "pack").read_bytes() == data
    assert calls[0] == atomic.DIRECT_MIN + 4096 and sum(calls[1:]) == len(data)


def test_the_aligned_buffers_are_reused_not_made_for_each_large_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh buffer costs a page fault a page, the cost direct writes save."""
    made: list[int] = []
    real_mmap = mmap.mmap

    def counting_mmap(fd: int, size: int) -> mmap.mmap:
        made.append(size)
        return real_mmap(fd, size)

    monkeypatch.setattr(atomic, "_buffers", atomic._AlignedBuffers())
    monkeypatch.setattr(mmap, "mmap", counting_mmap)
    for i in range(5):
        write_atomic(tmp_path / f"pack{i}", os.urandom(2 * 2**20 + i))
    assert made == [2 * 2**20]


def test_a_large_write_that_fails_keeps_the_old_file_and_the_buffer_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error in a direct write is raised (never taken for a refusal): the old file
    stays whole, the temporary goes, and the next large write succeeds."""
    p = tmp_path / "pack"
    write_atomic(p, b"old")
    real_write = os.write

    def failing_write(fd: int, data: memoryview) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "write", failing_write)
    with pytest.raises(OSError, match="Input/output"):
        write_atomic(p, os.urandom(2 * 2**20))
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["pack"]
    monkeypatch.setattr(atomic.os, "write", real_write)
    data = os.urandom(2 * 2**20 + 1)
    write_atomic(p, data)
    assert p.read_bytes() == data


def test_a_system_without_direct_writes_writes_large_files_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``O_DIRECT`` (not Linux): ``fcntl`` is never asked, the bytes go buffered."""
    asked: list[int] = []
    monkeypatch.setattr(atomic, "_O_DIRECT", 0)
    monkeypatch.setattr(atomic.fcntl, "fcntl", lambda *a: asked.append(1))
    data = os.urandom(atomic.DIRECT_MIN + 10)
    write_atomic(tmp_path / "pack", data)
    assert (tmp_path / "pack").read_bytes() == data and asked == []


def test_the_buffers_kept_are_the_largest_so_a_larger_pack_is_not_a_new_one_each_time() -> None:
    buffers = atomic._AlignedBuffers()
    small = [buffers.take(2**20) for _ in range(2)]
    for b in small:
        buffers.give(b)
    large = buffers.take(3 * 2**20)  # none fits: made
    buffers.give(large)
    assert buffers.take(3 * 2**20) is large  # kept, over the smaller ones
    assert buffers.take(2**20) in small
