"""The worker processes a backup or a restore starts never import from the current folder.

``python -m`` and ``python -c`` put the current folder first on ``sys.path``: ``lamina``
run as root from a folder others can write to would have loaded that folder's modules
into a process holding the store's keys. Each test runs a small program (as the
``lamina`` command runs: its own folder first on the path, not the current one) from a
folder holding a planted ``lamina`` package and ``selectors`` module, which leave a mark
when imported and then fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PLANTED = """
import pathlib
pathlib.Path({mark!r}).write_text(__name__)
raise ImportError("planted module imported")
"""

RESTORE_POOL = """
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from lamina.tree import restore_procs

if __name__ == "__main__":  # the fork server's workers run this file as __mp_main__
    ctx = multiprocessing.get_context("forkserver")
    restore_procs.start_fork_server()
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        print(pool.submit(abs, -3).result())
"""

SCAN_WORKER = """
import os
import sys

from lamina.store.keys import ChunkingSecret
from lamina.tree.scan_proc import Form, ReadProcess

folder = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
proc = ReadProcess(ChunkingSecret(chunker_seed=7, id_key=bytes(32)), bytes(32))
try:
    errors, fields, chunks = proc.run(Form.SEALED, [(folder, b"file", os.stat("file", dir_fd=folder))])
    print(errors, len(chunks))
finally:
    proc.close()
"""


def _run(tmp_path: Path, program: str, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    planted, mark = tmp_path / "cwd", tmp_path / "imported"
    (planted / "lamina").mkdir(parents=True)
    for p in (planted / "lamina" / "__init__.py", planted / "selectors.py"):
        p.write_text(PLANTED.format(mark=str(mark)))
    script = tmp_path / "bin" / "program.py"
    script.parent.mkdir()
    script.write_text(program)
    p = subprocess.run(
        [sys.executable, str(script), *args], cwd=planted, capture_output=True, text=True
    )
    return p, mark


def test_a_restores_fork_server_imports_nothing_from_the_current_folder(tmp_path: Path) -> None:
    p, mark = _run(tmp_path, RESTORE_POOL)
    assert not mark.exists(), mark.read_text()
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "3"


def test_a_backups_reading_worker_imports_nothing_from_the_current_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_bytes(b"x" * 1000)
    p, mark = _run(tmp_path, SCAN_WORKER, str(data))
    assert not mark.exists(), mark.read_text()
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[None] 1"
