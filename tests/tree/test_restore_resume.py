"""Resumable restore, and restoring only some paths."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from lamina.errors import UnsafePathError, UsageError
from lamina.store.repository import Store
from lamina.tree import restore as restore_mod
from lamina.tree.restore import Restorer, restore_tree
from lamina.tree.restore_writer import FileWriter

from .procsources import dict_blobs, store_blobs
from .treeutil import MIB, MTIME, assert_same_tree, build_rich_tree, describe, scan_tree, write

#: the uid and gid a root test run restores as, to see what another user would
NOBODY = 65534


class Interrupted(Exception):
    """Stands for a crash or Ctrl-C in the middle of a restore."""


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".lamina-restore-")]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return small_tree(tmp_path / "src")


def small_tree(root: Path) -> Path:
    """Twelve small files in three folders, a big one, a hard link, modes and owners."""
    for d in ("a", "b", "b/c"):
        for i in range(4):
            write(root / d / f"f{i}", f"{d}/{i}\n".encode() * (i + 1), MTIME + i)
    write(root / "big", os.urandom(5 * MIB + 1), MTIME + 9)
    os.link(root / "a" / "f0", root / "b" / "c" / "link-to-a-f0")
    os.chmod(root / "b", 0o750)
    os.chown(root / "b" / "c", 1234, 5678)
    for d in ("b/c", "b", "a"):
        os.utime(root / d, ns=(MTIME + 100, MTIME + 100))
    return root


def read_only_tree(src: Path) -> Path:
    """A read-only folder holding a file (mode 0555, its own mtime) and a file beside it."""
    write(src / "ro" / "inside", b"x" * 1000, MTIME)
    write(src / "top", b"y" * 10, MTIME)
    os.chmod(src / "ro", 0o555)
    os.utime(src / "ro", ns=(MTIME + 7, MTIME + 7))
    return src


def restore_as_nobody(blobs: dict[bytes, bytes], key: bytes, tid: bytes, out: Path) -> None:
    """Restore ``tid`` into ``out`` with no error, as another user than root would: as
    nobody in a forked child when the tests run as root, else as this user."""
    if os.geteuid() != 0:
        assert restore_tree(dict_blobs(blobs, key), tid, out).errors == []
        return
    pid = os.fork()
    if pid == 0:  # the child: nobody
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            st = restore_tree(dict_blobs(blobs, key), tid, out)
            code = 0 if st.errors == [] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def interrupt_after(monkeypatch: pytest.MonkeyPatch, n: int, leave_temp: bool) -> None:
    """Crash at the (n+1)-th file, optionally leaving a temporary as a kill -9 would.
    (Restores that use it write with one thread, so "the (n+1)-th" is well defined.)"""
    real = Restorer._file
    count = [0]

    def _file(self: Restorer, e, target, existing) -> None:  # type: ignore[no-untyped-def]
        if count[0] == n:
            if leave_temp:
                tmp = os.open(
                    b".lamina-restore-00000000deadbeef",
                    os.O_CREAT | os.O_WRONLY,
                    0o600,
                    dir_fd=target.folder.fd,
                )
                os.write(tmp, b"half written")
                os.close(tmp)
            raise Interrupted
        count[0] += 1
        real(self, e, target, existing)

    monkeypatch.setattr(Restorer, "_file", _file)


@pytest.mark.parametrize("leave_temp", [False, True])
def test_interrupted_restore_resumes(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leave_temp: bool
) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    done_first = 7
    with monkeypatch.context() as m:
        interrupt_after(m, done_first, leave_temp)
        with pytest.raises(Interrupted):
            restore_tree(store, tid, out, chunking=store.keys.chunking, workers=1)
    partial, _ = describe(out)
    files_in_place = [
        p
        for p, n in partial.items()
        if n.kind == "file" and not p.split(b"/")[-1].startswith(b".lamina-restore-")
    ]
    assert len(files_in_place) == done_first
    assert bool(temp_files(out)) == leave_temp
    inodes = {p: os.lstat(os.fsencode(out) + b"/" + p).st_ino for p in files_in_place}

    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert st.errors == []
    assert st.skipped == done_first
    assert temp_files(out) == []
    assert_same_tree(src, out)
    # what was in place was left alone, not written again
    for p, ino in inodes.items():
        assert os.lstat(os.fsencode(out) + b"/" + p).st_ino == ino

    again = restore_tree(
        store, tid, out, chunking=store.keys.chunking
    )  # a third run has nothing to do
    assert again.skipped == again.files - 1  # the hard link is re-made, not "skipped"
    assert again.bytes == 0
    assert_same_tree(src, out)


def test_interrupted_while_writing_a_big_file_leaves_no_partial_file(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    real = Store.get_many

    def get_many(self: Store, ids):  # type: ignore[no-untyped-def]
        ids = list(ids)
        it = real(self, ids)
        if len(ids) > 1:  # the big file: hand out one chunk, then fail
            yield next(it)
            raise Interrupted
        yield from it

    with monkeypatch.context() as m:
        m.setattr(Store, "get_many", get_many)
        # file jobs read the store itself, not batches of it (``in_batches``)
        m.setattr(restore_mod, "in_batches", lambda source: source)
        with pytest.raises(Interrupted):
            restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert not (out / "big").exists()
    assert temp_files(out) == []
    restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert_same_tree(src, out)


def test_rich_tree_resumes_to_identical(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    build_rich_tree(src)
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    for n in (3, 9):  # two interruptions at different places
        with monkeypatch.context() as m:
            interrupt_after(m, n, leave_temp=True)
            with pytest.raises(Interrupted):
                restore_tree(store, tid, out, chunking=store.keys.chunking, workers=1)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert st.skipped > 0 and st.errors == []
    assert temp_files(out) == []
    assert_same_tree(src, out)


def test_a_whole_restore_into_an_empty_folder_shows_its_files_once_all_are_written(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into an empty folder the restore fills a staging folder of its own: while any file
    is written the target shows nothing else, and no file is written under a temporary
    name and renamed (only the staging folder's entries are moved, at the end)."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    out.mkdir()
    seen: list[list[str]] = []
    renames: list[str | bytes] = []
    real_write, real_rename = FileWriter._write, os.rename

    def _write(self: FileWriter, e, target, existing) -> None:  # type: ignore[no-untyped-def]
        seen.append(os.listdir(out))
        real_write(self, e, target, existing)

    def rename(*args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        renames.append(args[0])
        real_rename(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(FileWriter, "_write", _write)
        m.setattr(os, "rename", rename)
        st = restore_tree(store, tid, out, chunking=store.keys.chunking, workers=2)
    assert st.errors == [] and st.files == 14
    assert len(seen) == 13  # the hard link's second name is a link, not written
    assert all(len(names) == 1 and names[0].startswith(".lamina-restore-") for names in seen)
    assert sorted(map(os.fsencode, renames)) == sorted(map(os.fsencode, os.listdir(src)))
    assert_same_tree(src, out)
    assert temp_files(out) == []


# --- partial restore ---------------------------------------------------------------------


def paths_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_partial_restore_of_a_directory(store: Store, src: Path, tmp_path: Path) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    st = restore_tree(store, tid, out, paths=["b/c"], chunking=store.keys.chunking)
    assert st.errors == []
    assert paths_under(out) == {
        "b",
        "b/c",
        "b/c/f0",
        "b/c/f1",
        "b/c/f2",
        "b/c/f3",
        "b/c/link-to-a-f0",
    }
    # the selected subtree is exact; its hard-link partner outside the selection is a copy
    full = tmp_path / "full"
    restore_tree(store, tid, full, chunking=store.keys.chunking)
    assert_same_tree(full / "b" / "c", out / "b" / "c")
    assert (out / "b" / "c" / "link-to-a-f0").read_bytes() == (src / "a" / "f0").read_bytes()
    # the parent on the way gets its own metadata too
    b = os.stat(out / "b")
    assert stat.S_IMODE(b.st_mode) == 0o750 and b.st_mtime_ns == MTIME + 100


def test_partial_restore_of_single_files(store: Store, src: Path, tmp_path: Path) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    restore_tree(store, tid, out, paths=["/a/f2", "b/./c/f1", "big"], chunking=store.keys.chunking)
    assert paths_under(out) == {"a", "a/f2", "b", "b/c", "b/c/f1", "big"}
    assert (out / "a" / "f2").read_bytes() == (src / "a" / "f2").read_bytes()
    assert (out / "big").read_bytes() == (src / "big").read_bytes()


def test_partial_restore_keeps_links_inside_the_selection(
    store: Store, src: Path, tmp_path: Path
) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    restore_tree(store, tid, out, paths=["a", "b"], chunking=store.keys.chunking)
    assert os.stat(out / "a" / "f0").st_ino == os.stat(out / "b" / "c" / "link-to-a-f0").st_ino
    assert not (out / "big").exists()


@pytest.mark.parametrize(
    "paths",
    [["nope"], ["a/nope"], ["a/f0/below-a-file"], ["b/c", "typo"], ["big", "a/f0", "zzz/f"]],
)
def test_path_not_in_the_snapshot_is_a_usage_error(
    store: Store, src: Path, tmp_path: Path, paths: list[str]
) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="not in the snapshot"):
        restore_tree(store, tid, out, paths=paths, chunking=store.keys.chunking)
    assert not out.exists() or os.listdir(out) == []  # refused before writing anything


@pytest.mark.parametrize("bad", ["../etc", "a/../../x", "a/\0b"])
def test_unsafe_selection_is_refused(store: Store, src: Path, tmp_path: Path, bad: str) -> None:
    tid, _ = scan_tree(store, src)
    with pytest.raises(UnsafePathError):
        restore_tree(store, tid, tmp_path / "out", paths=[bad], chunking=store.keys.chunking)


def test_restore_over_another_tree_with_delete_gives_exactly_the_snapshot(
    store: Store, tmp_path: Path
) -> None:
    """Types swap (file <-> dir <-> symlink), files change, extras go: the result is exact."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "x", b"x is a file")
    write(a / "y" / "inner", b"y is a dir")
    os.symlink("somewhere", a / "z")
    write(a / "only-in-a" / "deep" / "f", b"extra")
    write(a / "same", b"same in both", MTIME + 5)
    write(a / "edited", b"old", MTIME)
    write(b / "x" / "now-a-dir", b"x became a dir")
    os.symlink("x", b / "y")
    write(b / "z", b"z became a file")
    write(b / "same", b"same in both", MTIME + 5)
    write(b / "edited", b"new!", MTIME + 1)
    os.mkfifo(b / "pipe")
    for root in (a, b):
        for d, _, _ in os.walk(root):
            os.utime(d, ns=(MTIME, MTIME))
    ta, _ = scan_tree(store, a)
    tb, _ = scan_tree(store, b)
    out = tmp_path / "out"
    restore_tree(store, ta, out, chunking=store.keys.chunking)
    assert_same_tree(a, out)
    st = restore_tree(store, tb, out, delete_extra=True, chunking=store.keys.chunking)
    assert st.errors == [] and st.removed == 1 and st.skipped == 1  # only-in-a; same
    assert_same_tree(b, out)
    # and without --delete the extra stays, everything else is exact
    restore_tree(store, ta, out, chunking=store.keys.chunking)
    write(out / "keep-me", b"user's own file")
    st = restore_tree(store, tb, out, chunking=store.keys.chunking)
    assert st.removed == 0 and (out / "keep-me").exists() and (out / "only-in-a").exists()
    assert_same_tree(
        b, out, ignore={b"keep-me", b"only-in-a", b"only-in-a/deep", b"only-in-a/deep/f"}
    )


def test_a_name_that_appears_in_the_target_meanwhile_is_never_replaced(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something made in the target while a staged restore runs, under a name the tree
    also has, is kept: that entry is reported and left in the staging folder, the rest
    moved into place."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    out.mkdir()
    real = FileWriter._write

    def _write(self: FileWriter, e, target, existing) -> None:  # type: ignore[no-untyped-def]
        if not (out / "big").exists():
            (out / "big").write_bytes(b"mine")
        real(self, e, target, existing)

    monkeypatch.setattr(FileWriter, "_write", _write)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking, workers=1)
    assert (out / "big").read_bytes() == b"mine"
    assert len(st.errors) == 1 and st.errors[0].startswith("big: ")
    (stage,) = temp_files(out)
    assert os.listdir(stage) == ["big"]
    assert (stage / "big").read_bytes() == (src / "big").read_bytes()
    assert (out / "b" / "c" / "f3").read_bytes() == (src / "b" / "c" / "f3").read_bytes()


def test_sigterm_stops_a_staged_restore_as_ctrl_c_does(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (``systemctl stop``, ``timeout``) in the middle of a whole restore into an
    empty folder: what it wrote is moved into place, whole, and the next restore there
    keeps it and finishes."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    done_first = 5
    count = [0]
    real = Restorer._file

    def _file(self: Restorer, e, target, existing) -> None:  # type: ignore[no-untyped-def]
        if count[0] == done_first:
            # to this (the main) thread: delivered before the call returns, raised as it does
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        count[0] += 1
        real(self, e, target, existing)

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with monkeypatch.context() as m:
            m.setattr(Restorer, "_file", _file)
            with pytest.raises(KeyboardInterrupt):
                restore_tree(store, tid, out, chunking=store.keys.chunking, workers=1)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert temp_files(out) == []
    partial, _ = describe(out)
    assert len([p for p, n in partial.items() if n.kind == "file"]) == done_first
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert st.errors == [] and st.skipped == done_first
    assert_same_tree(src, out)


def test_a_restore_by_another_user_moves_a_read_only_folder_into_place(
    store: Store, tmp_path: Path
) -> None:
    """Not as root, a folder's mode without write permission would stop it moving from
    the staging folder (its ``..`` changes): it is moved anyway, with its mode and times
    as the tree's. (As root the test restores as nobody, in a child process.)"""
    src = read_only_tree(tmp_path / "src")
    tid, _ = scan_tree(store, src)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    out = base / "out"
    try:
        if os.geteuid() == 0:
            os.chown(base, NOBODY, NOBODY)
        restore_as_nobody(blobs, key, tid, out)
        assert sorted(os.listdir(out)) == ["ro", "top"]
        ro = os.stat(out / "ro")
        assert stat.S_IMODE(ro.st_mode) == 0o555 and ro.st_mtime_ns == MTIME + 7
        assert (out / "ro" / "inside").read_bytes() == b"x" * 1000
    finally:
        if os.geteuid() != 0 and (out / "ro").exists():
            os.chmod(out / "ro", 0o755)
        shutil.rmtree(base)
