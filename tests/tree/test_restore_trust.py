"""Restore never follows a link it did not make, and verifies what it keeps.

Review findings 10 (keep-aside through a symlinked parent), 11 (FIFO/device chmod
through a swapped-in symlink), 12 (size+mtime trusted) and 17 (``--output`` as root
makes device nodes and keeps setuid). Swaps are done inside wrapped calls: no race.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from lamina.store.repository import Store
from lamina.tree.restore import Restorer, restore_tree

from .treeutil import MTIME, scan_tree, write

SECRET = b"root:$6$SECRETHASH:19000:0:99999:7:::\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A root-only folder outside every restore target, holding a file to protect."""
    etc = tmp_path / "outside-etc"
    etc.mkdir(mode=0o700)
    write(etc / "shadow", SECRET)
    os.chmod(etc / "shadow", 0o600)
    return etc


def test_keep_aside_never_renames_through_a_symlinked_parent(
    store: Store, tmp_path: Path, outside: Path
) -> None:
    """Finding 10: alice swaps ~/x for a symlink to /etc; restoring ~/x/shadow with
    keep-aside must not rename /etc/shadow."""
    src = tmp_path / "src"
    write(src / "home" / "alice" / "x" / "shadow", b"alice's file\n")
    tid, _ = scan_tree(store, src)
    target = tmp_path / "target"
    (target / "home" / "alice").mkdir(parents=True)
    os.symlink(outside, target / "home" / "alice" / "x")
    st = restore_tree(
        store,
        tid,
        target,
        paths=["home/alice/x/shadow"],
        chunking=store.keys.chunking,
        keep_aside=".lamina-20261130T011134",
    )
    assert sorted(os.listdir(outside)) == ["shadow"]
    assert (outside / "shadow").read_bytes() == SECRET
    x = target / "home" / "alice" / "x"
    assert not x.is_symlink() and (x / "shadow").read_bytes() == b"alice's file\n"
    assert st.kept == []  # nothing was in place inside the (real) folder


def test_keep_aside_renames_what_is_in_place_inside_the_target(
    store: Store, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "d" / "f", b"from the snapshot\n")
    tid, _ = scan_tree(store, src)
    target = tmp_path / "target"
    write(target / "d" / "f", b"current\n")
    st = restore_tree(store, tid, target, paths=["d/f"], keep_aside=".lamina-T")
    assert st.kept == ["d/f.lamina-T"]
    assert (target / "d" / "f.lamina-T").read_bytes() == b"current\n"
    assert (target / "d" / "f").read_bytes() == b"from the snapshot\n"


def test_fifo_chmod_never_follows_a_symlink_swapped_in_after_mknod(
    store: Store, tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 11: right after mknod the folder's owner replaces the node with a
    symlink to a root file; the snapshot's mode must not land on that file."""
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe", 0o666)
    os.chmod(src / "pipe", 0o666)
    tid, _ = scan_tree(store, src)
    target = tmp_path / "target"
    target.mkdir()
    real = os.mknod
    swapped: list[bytes] = []

    def mknod(path: Any, mode: int = 0o600, device: int = 0, *, dir_fd: int | None = None) -> None:
        real(path, mode, device, dir_fd=dir_fd)
        name = os.fsencode(path)
        os.unlink(name, dir_fd=dir_fd)
        os.symlink(outside / "shadow", name, dir_fd=dir_fd)
        swapped.append(name)

    monkeypatch.setattr(os, "mknod", mknod)
    st = restore_tree(store, tid, target)
    monkeypatch.undo()
    assert swapped
    assert stat.S_IMODE(os.stat(outside / "shadow").st_mode) == 0o600
    assert (outside / "shadow").read_bytes() == SECRET
    assert st.errors and "replaced while being restored" in st.errors[0]
    assert not [n for n in os.listdir(target) if n.startswith(".lamina-restore-")]


def test_fifo_and_device_are_restored_with_their_metadata(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    os.chmod(src / "pipe", 0o640)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chown(src / "null", 1234, 5678)
    os.chmod(src / "null", 0o666)
    os.utime(src / "pipe", ns=(MTIME, MTIME))
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    write(out / "pipe", b"a regular file in the way")
    st = restore_tree(store, tid, out)
    assert st.errors == []
    p, n = os.lstat(out / "pipe"), os.lstat(out / "null")
    assert stat.S_ISFIFO(p.st_mode) and stat.S_IMODE(p.st_mode) == 0o640
    assert p.st_mtime_ns == MTIME
    assert stat.S_ISCHR(n.st_mode) and n.st_rdev == os.makedev(1, 3)
    assert (n.st_uid, n.st_gid, stat.S_IMODE(n.st_mode)) == (1234, 5678, 0o666)


def scramble_in_place(path: Path) -> None:
    """Ransomware that keeps size and mtime: rewrite the bytes, put the mtime back."""
    st = os.stat(path)
    data = path.read_bytes()
    with open(path, "r+b") as f:
        f.write(bytes(b ^ 0x5A for b in data))
    os.chmod(path, 0o666)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("chunking", [True, False])
def test_file_damaged_in_place_with_same_size_and_mtime_is_restored(
    store: Store, tmp_path: Path, chunking: bool
) -> None:
    """Finding 12: size+mtime prove nothing; the content is checked (or rewritten)."""
    src = tmp_path / "src"
    write(src / "report.doc", b"quarterly numbers\n" * 500)
    os.chmod(src / "report.doc", 0o640)
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    secret = store.keys.chunking if chunking else None
    restore_tree(store, tid, out, chunking=secret)
    scramble_in_place(out / "report.doc")
    st = restore_tree(store, tid, out, chunking=secret)
    assert (out / "report.doc").read_bytes() == b"quarterly numbers\n" * 500
    assert stat.S_IMODE(os.stat(out / "report.doc").st_mode) == 0o640
    assert st.skipped == 0 and st.files == 1


def test_intact_file_is_kept_and_its_metadata_reapplied(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", b"intact\n" * 100)
    os.chmod(src / "f", 0o600)
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    restore_tree(store, tid, out, chunking=store.keys.chunking)
    ino = os.stat(out / "f").st_ino
    os.chmod(out / "f", 0o666)
    os.chown(out / "f", 4321, 4321)
    os.utime(out / "f", ns=(MTIME + 7, MTIME + 7))  # a touch: the content is the same
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    f = os.stat(out / "f")
    assert st.skipped == 1 and f.st_ino == ino  # proved intact: not written again
    assert (stat.S_IMODE(f.st_mode), f.st_uid, f.st_mtime_ns) == (0o600, 0, MTIME)


@pytest.fixture
def hostile_tree(tmp_path: Path) -> Path:
    """An endpoint-controlled tree: a 0666 block device, a setuid-root shell, a user file."""
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "disk", stat.S_IFBLK | 0o666, os.makedev(8, 0))
    os.chmod(src / "disk", 0o666)
    os.mkfifo(src / "pipe")
    write(src / "rootshell", b"#!/bin/sh\nexec /bin/sh -p\n")
    os.chmod(src / "rootshell", 0o4755)
    write(src / "setgid-tool", b"tool")
    os.chmod(src / "setgid-tool", 0o2755)
    write(src / "notes", b"user data")
    os.chown(src / "notes", 1234, 5678)
    return src


@pytest.mark.skipif(os.geteuid() != 0, reason="the finding is about restores made as root")
def test_output_restore_makes_no_devices_no_setuid_and_no_chown(
    store: Store, tmp_path: Path, hostile_tree: Path
) -> None:
    """Finding 17: what ``--output`` does by default (special_files and same_owner off)."""
    tid, _ = scan_tree(store, hostile_tree)
    out = tmp_path / "out"
    st = restore_tree(store, tid, out, special_files=False, same_owner=False)
    assert sorted(os.listdir(out)) == ["notes", "rootshell", "setgid-tool"]
    assert st.specials_skipped == 2
    assert stat.S_IMODE(os.stat(out / "rootshell").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out / "setgid-tool").st_mode) == 0o755
    notes = os.stat(out / "notes")
    assert (notes.st_uid, notes.st_gid) == (os.geteuid(), os.getegid())


@pytest.mark.skipif(os.geteuid() != 0, reason="makes device nodes")
def test_special_files_and_same_owner_restore_everything(
    store: Store, tmp_path: Path, hostile_tree: Path
) -> None:
    tid, _ = scan_tree(store, hostile_tree)
    out = tmp_path / "out"
    restore_tree(store, tid, out, special_files=True, same_owner=True)
    assert stat.S_ISBLK(os.lstat(out / "disk").st_mode)
    assert stat.S_IMODE(os.stat(out / "rootshell").st_mode) == 0o4755
    assert os.stat(out / "notes").st_uid == 1234


def test_a_hard_link_is_never_made_through_a_folder_swapped_for_a_symlink(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-place restore: the folder holding a hard link's first name is swapped for a
    symlink to a file elsewhere before the second name is linked. The link must not
    reach through it: the second name gets a copy of the tree's content instead."""
    src = tmp_path / "src"
    write(src / "a" / "first", b"the tree's content", MTIME)
    (src / "b").mkdir()
    os.link(src / "a" / "first", src / "b" / "second")
    tid, _ = scan_tree(store, src)
    outside = tmp_path / "outside"
    write(outside / "first", b"a file elsewhere", MTIME)
    out = tmp_path / "out"
    write(out / "keep", b"in place already", MTIME)  # not empty: restored in place
    real = Restorer._link

    def _link(self: Restorer, e: Any, fd: int, rel: list[bytes]) -> None:
        os.rename(out / "a", out / "a-moved")
        os.symlink(outside, out / "a")
        real(self, e, fd, rel)

    monkeypatch.setattr(Restorer, "_link", _link)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking, workers=1)
    assert st.errors == []
    second = out / "b" / "second"
    assert second.read_bytes() == b"the tree's content"
    assert os.stat(second).st_ino != os.stat(outside / "first").st_ino
    assert (outside / "first").read_bytes() == b"a file elsewhere"
