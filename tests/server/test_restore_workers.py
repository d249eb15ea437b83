"""`lamina cvd restore --output` over worker processes: each worker is a client of the
real server of its own (`remote_blobs.worker_blobs`), reading blobs as stored and hashing them."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from lamina.cli.client import Api
from lamina.cli.cvd import id_key_of
from lamina.cli.remote_blobs import WORKER_MODULES, remote_blobs, worker_blobs
from lamina.tree.restore import restore_tree
from lamina.tree.restore_types import Opener

from . import worker_probe
from .conftest import Live


def test_a_cvd_restore_in_worker_processes_reads_through_the_server(
    live: Live, tmp_path: Path
) -> None:
    dev = live.device("desk-4")
    files = {f"f{i:02d}".encode(): os.urandom(1000 + 37 * i) for i in range(40)}
    snap = dev.commit_files({name: [data] for name, data in files.items()})
    hd = live.user("hd", "helpdesk")
    doc = hd.post(f"/cvds/{dev.cvd_id}/snapshots/{snap}/download", json={"paths": []}).json()
    token = hd.headers["Authorization"].removeprefix("Bearer ")
    key = id_key_of(doc)
    out = tmp_path / "out"
    parent = remote_blobs(Api(live.url, token), key)
    st = restore_tree(
        parent,
        bytes.fromhex(doc["root"]),
        out,
        processes=2,
        opener=Opener(functools.partial(worker_blobs, live.url, token, key), WORKER_MODULES),
    )
    assert st.errors == [] and st.files == 40
    assert {os.fsencode(p.name): p.read_bytes() for p in out.iterdir()} == files
    # the restoring process read the tree (4 KiB here), none of the files (68 KiB)
    assert parent.fetched_bytes < sum(map(len, files.values())) // 4


def test_a_cvd_restores_fork_server_imports_httpx_once_without_the_admin_commands(
    live: Live, tmp_path: Path
) -> None:
    """Each worker made its HTTP client by importing httpx with its command-line tool
    (click, Rich) after a fork server that imported ``lamina.cli.cvd`` (typer and every
    admin command group) for one function: the fork server now imports httpx without its
    tool and the workers' lean module (``WORKER_MODULES``), and the workers import none
    of those (``worker_probe.lean_worker_blobs`` refuses to open otherwise)."""
    dev = live.device("desk-5")
    files = {f"g{i:02d}".encode(): os.urandom(500 + i) for i in range(12)}
    snap = dev.commit_files({name: [data] for name, data in files.items()})
    hd = live.user("hd", "helpdesk")
    doc = hd.post(f"/cvds/{dev.cvd_id}/snapshots/{snap}/download", json={"paths": []}).json()
    token = hd.headers["Authorization"].removeprefix("Bearer ")
    out = tmp_path / "out"
    args = (live.url, token, doc["id_key"], doc["root"], str(out))
    # A process of its own: its fork server starts with this restore's modules.
    p = subprocess.run(
        [sys.executable, "-m", worker_probe.__name__, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["12", "[]"]
    assert {os.fsencode(p.name): p.read_bytes() for p in out.iterdir()} == files
    assert "lamina.cli.cvd" not in WORKER_MODULES
