"""`lamina snapshot restore` of a large tree writes its files in worker processes, each
opening the store itself: the tree comes out exact, hard links and folder times included."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from lamina.tree import restore_procs
from tests.cli.conftest import Cli
from tests.tree.treeutil import MTIME, assert_same_tree, write


def test_snapshot_restore_in_worker_processes_is_exact(
    cli_factory: Callable[..., Cli], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for d in range(5):
        for i in range(30):
            write(src / f"d{d}" / f"f{i}", os.urandom(100 + 331 * i), MTIME + i)
        os.symlink(f"f{d}", src / f"d{d}" / "link")
        os.utime(src / f"d{d}", ns=(MTIME + 9, MTIME + 9))
    os.link(src / "d0" / "f3", src / "d4" / "again")
    started: list[int] = []
    start = restore_procs.start

    def counted(setup: restore_procs.WorkerSetup, n: int) -> ProcessPoolExecutor:
        started.append(n)
        return start(setup, n)

    # a tree this small stays on threads: ask for two processes
    monkeypatch.setattr("lamina.cli.snapshot.processes_for", lambda files, size: 2)
    monkeypatch.setattr("lamina.tree.restore.start", counted)
    cli = cli_factory()
    cli.json("store", "init")
    cli.json("snapshot", "create", str(src))
    out = tmp_path / "out"
    doc = cli.json("snapshot", "restore", "latest", "--output", str(out), "--json")
    assert started == [2]
    assert doc["files"] == 151 and doc["errors"] == []
    assert_same_tree(src, out)
    assert os.stat(out / "d4" / "again").st_ino == os.stat(out / "d0" / "f3").st_ino
    assert not [p for p in out.rglob(".lamina-restore-*")]
