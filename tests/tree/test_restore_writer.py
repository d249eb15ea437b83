"""A restored file's mode: set when the file is created when that is its final mode, else
by ``fchmod`` after its content and owner; never more rights than it ends with."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.store.repository import Store
from lamina.tree.restore import restore_tree
from lamina.tree.restore_writer import process_umask

from .treeutil import MTIME, scan_tree, write

#: file name -> its mode; under umask 022 the first four are created with it
MODES = {
    "plain": 0o644,
    "exe": 0o755,
    "read-only": 0o444,
    "none": 0o000,
    "group-writable": 0o664,  # the umask would clear g+w: fchmod
    "setuid": 0o4755,  # setuid/setgid only by fchmod, after the owner
}
SET_AFTER = {"group-writable", "setuid"}


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _files_chmodded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the regular files ``os.fchmod`` is called on from now on."""
    seen: list[str] = []
    real = os.fchmod

    def fchmod(fd: int, mode: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    return seen


def test_the_umask_is_read_without_changing_it(umask_022: None) -> None:
    assert process_umask() == 0o022
    assert os.umask(0o022) == 0o022


def test_a_file_whose_mode_the_umask_keeps_is_created_with_it(
    store: Store, tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four of the six files need no ``fchmod``; every mode is exact either way. (In a
    folder the restore made: the target's own group and default ACL are not known.)"""
    src = tmp_path / "src"
    for name, mode in MODES.items():
        write(src / "d" / name, name.encode() * 100, MTIME)
        os.chmod(src / "d" / name, mode)
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    chmodded = _files_chmodded(monkeypatch)
    st = restore_tree(store, tid, out, workers=1)
    assert st.errors == [] and st.files == len(MODES)
    for name, mode in MODES.items():
        got = os.stat(out / "d" / name)
        assert stat.S_IMODE(got.st_mode) == mode, name
        assert got.st_mtime_ns == MTIME
        assert (out / "d" / name).read_bytes() == name.encode() * 100
    # fchmod ran on the temporary names of exactly the files that needed it
    assert len(chmodded) == len(SET_AFTER)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another owner needs root")
def test_a_file_given_another_owner_gets_its_mode_after_the_chown(
    store: Store, tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Created as root, then chowned: its mode is set after (never readable by the wrong
    owner's rights in between)."""
    src = tmp_path / "src"
    write(src / "d" / "theirs", b"x" * 10, MTIME)
    os.chmod(src / "d" / "theirs", 0o640)
    os.chown(src / "d" / "theirs", 1234, 1234)
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    chmodded = _files_chmodded(monkeypatch)
    st = restore_tree(store, tid, out, workers=1, same_owner=True)
    assert st.errors == []
    got = os.stat(out / "d" / "theirs")
    assert (stat.S_IMODE(got.st_mode), got.st_uid, got.st_gid) == (0o640, 1234, 1234)
    assert len(chmodded) == 1
