"""`lamina snapshot restore` of a large tree writes its files in worker processes, each
opening the store itself: the tree comes out exact, hard links and folder times included."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_snapshot_restore_opens_the_store_without_sqlalchemy(
    cli_factory: Callable[..., Cli], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restoring process resolves the snapshot and reads the trees through the
    embedded catalog on ``sqlite3``, and its workers' fork server imports that catalog's
    module, not SQLAlchemy's (about 0.3 s of CPU in each)."""
    src = tmp_path / "src"
    for i in range(20):
        write(src / "d" / f"f{i}", os.urandom(200 + i), MTIME + i)
    cli = cli_factory()
    cli.json("store", "init")
    cli.json("snapshot", "create", str(src))
    out = tmp_path / "out"
    probe = (
        "import sys\n"
        "from lamina.cli import main\n"
        f"sys.argv = ['lamina', 'snapshot', 'restore', 'latest', '-o', {str(out)!r},"
        f" '--data', {str(cli.data)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('sqlalchemy' in sys.modules)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=cli.env, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "False"
    assert_same_tree(src, out)
    modules: list[tuple[str, ...]] = []
    start = restore_procs.start

    def seen(setup: restore_procs.WorkerSetup, n: int) -> ProcessPoolExecutor:
        modules.append(setup.opener.modules)
        return start(setup, n)

    monkeypatch.setattr("lamina.cli.snapshot.processes_for", lambda files, size: 2)
    monkeypatch.setattr("lamina.tree.restore.start", seen)
    doc = cli.json("snapshot", "restore", "latest", "--output", str(tmp_path / "again"), "--json")
    assert doc["files"] == 20 and doc["errors"] == []
    assert modules == [("lamina.cli.store_open", "lamina.db.sqlite_catalog")]
