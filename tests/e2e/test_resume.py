"""Interrupted uploads: the server killed mid-upload, and the agent killed mid-upload.

The agent talks to its server through an ``UploadGate`` (tests/e2e/gate.py) that holds one
of its bundles once enough have arrived: each test strikes while the agent is known to be
blocked mid-upload, with no bandwidth limit or poll deciding when.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.corpus import describe, make_tree
from tests.e2e.conftest import LAMINA, Deployment, Lamina
from tests.e2e.endpoints import protected
from tests.e2e.gate import UploadGate

MiB = 1024 * 1024


def _admin_get(admin: Lamina, url: str, path: str) -> Any:
    token = json.loads((Path(admin.env["XDG_CONFIG_HOME"]) / "lamina/login.json").read_text())[
        "token"
    ]
    r = httpx.get(f"{url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    r.raise_for_status()
    return r.json()


def _enroll(agent: Lamina, server: str, token: str, root: Path, state: Path) -> None:
    args = ["--server", server, "--token", token, "--root", str(root), "--state", str(state)]
    assert agent.json("agent", "enroll", *args)["state"] == "active"


def _restores_exactly(admin: Lamina, cvd: str, root: Path, out: Path) -> None:
    admin.run("cvd", "restore", cvd, "--output", str(out), "--special-files", "--same-owner")
    assert describe(out) == protected(describe(root))


def _agent_run(agent: Lamina, state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LAMINA, "agent", "run", "--once", "--json", "--state", str(state)],
        env=agent.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _held(gate: UploadGate, proc: subprocess.Popen[str]) -> None:
    # A generous bound on a missing event, not a timing: the gate holds the agent.
    if not gate.held.wait(timeout=600):
        proc.kill()
        raise AssertionError(f"no bundle was held: {proc.communicate()[1][-2000:]}")


def _progress_shown(admin: Lamina, url: str, uploaded: int) -> dict[str, Any]:
    """The CVD's progress once it shows ``uploaded`` bytes: a server writes the agents'
    progress reports a second after they arrive. A generous bound, not a timing."""
    deadline = time.monotonic() + 60
    while True:
        progress: dict[str, Any] = _admin_get(admin, url, "/cvds")[0]["progress"]
        # the count of what the sync covers comes on its own (and reported once done)
        shown = progress.get("uploaded", 0) >= uploaded and "total_bytes" in progress
        if shown or time.monotonic() > deadline:
            return progress
        time.sleep(0.1)


@pytest.mark.e2e
def test_server_killed_during_upload_agent_resumes(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "resume")
    token = admin.json("token", "create", "--policy", "resume")["token"]
    root = make_tree(tmp_path / "endpoint", small=300, large_mb=40)
    state = tmp_path / "state"
    agent = person("agent")
    server = embedded.servers[0]
    with UploadGate(embedded.url, hold_after=8 * MiB).running() as gate:
        _enroll(agent, gate.url, token, root, state)
        proc = _agent_run(agent, state)
        _held(gate, proc)
        # The server shows the centralization's progress up to the held bundle (written
        # within a second of its report: services/progress.py).
        progress = _progress_shown(admin, embedded.url, 8 * MiB)
        assert progress["phase"] == "centralizing" and 0 <= progress["percent"] < 100
        assert progress["uploaded"] >= 8 * MiB
        assert progress["total_files"] > 250 and progress["total_bytes"] > 40 * MiB
        gate.freeze()  # what the agent sends from now on waits for the restarted server
        server.kill()
        server.start()
        gate.release()  # the held bundle goes to the restarted server
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    done = json.loads(out)
    assert done["synced"] and done["last_snapshot"]
    _restores_exactly(admin, done["cvd_id"], root, tmp_path / "restored")
    server.stop()
    assert "no errors" in admin.run("store", "check", "--read-data", *embedded.store_args).stdout


@pytest.mark.e2e
def test_agent_killed_during_upload_resumes_without_resending(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "resume")
    token = admin.json("token", "create", "--policy", "resume")["token"]
    root = make_tree(tmp_path / "endpoint", small=200, large_mb=40)
    state = tmp_path / "state"
    agent = person("agent")
    with UploadGate(embedded.url, hold_after=24 * MiB).running() as gate:
        _enroll(agent, gate.url, token, root, state)
        proc = _agent_run(agent, state)
        _held(gate, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        gate.drop()  # the killed agent's last bundle never arrives
        assert _admin_get(admin, embedded.url, "/cvds")[0]["snapshots"] == 0
        done = agent.json("agent", "run", "--once", "--state", str(state))
    assert done["synced"]
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
    # What arrived before the kill (>= 24 MiB of ~42 MiB) is not sent again.
    assert done["last_sync_stats"]["uploaded_bytes"] < total - 16 * MiB
    _restores_exactly(admin, done["cvd_id"], root, tmp_path / "restored")
