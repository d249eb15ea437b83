"""store/atomic.py: the one atomic write (temp, fsync, rename, fsync of the folder)."""

from __future__ import annotations

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
