"""Interrupted uploads: the server killed mid-upload, and the agent killed mid-upload."""

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


def _admin_get(admin: Lamina, url: str, path: str) -> Any:
    token = json.loads((Path(admin.env["XDG_CONFIG_HOME"]) / "lamina/login.json").read_text())[
        "token"
    ]
    r = httpx.get(f"{url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    r.raise_for_status()
    return r.json()


def _wait_for_progress(
    admin: Lamina, dep: Deployment, agent: subprocess.Popen[str], at_least: int
) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert agent.poll() is None, "the upload finished before it could be interrupted"
        cvds = _admin_get(admin, dep.url, "/cvds")
        if cvds and cvds[0]["progress"].get("uploaded", 0) >= at_least:
            return dict(cvds[0]["progress"])
        time.sleep(0.05)
    raise AssertionError("no upload progress reached the server")


@pytest.mark.e2e
def test_server_killed_during_upload_agent_resumes(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "slow", "--bandwidth", "8M")
    token = admin.json("token", "create", "--policy", "slow")["token"]
    root = make_tree(tmp_path / "endpoint", small=300, large_mb=40)
    state = tmp_path / "state"
    agent = person("agent")
    assert (
        agent.json(
            "agent",
            "enroll",
            "--server",
            embedded.url,
            "--token",
            token,
            "--root",
            str(root),
            "--state",
            str(state),
        )["state"]
        == "active"
    )
    proc = subprocess.Popen(
        [*LAMINA, "agent", "run", "--once", "--json", "--state", str(state)],
        env=agent.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress = _wait_for_progress(admin, embedded, proc, 8 * 1024 * 1024)
    # The server shows the centralization's progress: percent, bytes, files.
    assert progress["phase"] == "centralizing" and 0 <= progress["percent"] < 100
    assert progress["total_files"] > 250 and progress["total_bytes"] > 40 * 1024 * 1024
    server = embedded.servers[0]
    server.kill()
    time.sleep(1.0)
    server.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    done = json.loads(out)
    assert done["synced"] and done["last_snapshot"]
    restored = tmp_path / "restored"
    admin.run(
        "cvd",
        "restore",
        done["cvd_id"],
        "--output",
        str(restored),
        "--special-files",
        "--same-owner",
    )
    assert describe(restored) == protected(describe(root))
    server.stop()
    assert "no errors" in admin.run("store", "check", "--read-data", *embedded.store_args).stdout


@pytest.mark.e2e
def test_agent_killed_during_upload_resumes_without_resending(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "slow", "--bandwidth", "8M")
    token = admin.json("token", "create", "--policy", "slow")["token"]
    root = make_tree(tmp_path / "endpoint", small=200, large_mb=40)
    state = tmp_path / "state"
    agent = person("agent")
    agent.run(
        "agent",
        "enroll",
        "--server",
        embedded.url,
        "--token",
        token,
        "--root",
        str(root),
        "--state",
        str(state),
    )
    proc = subprocess.Popen(
        [*LAMINA, "agent", "run", "--once", "--state", str(state)],
        env=agent.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_progress(admin, embedded, proc, 24 * 1024 * 1024)  # type: ignore[arg-type]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _admin_get(admin, embedded.url, "/cvds")[0]["snapshots"] == 0
    done = agent.json("agent", "run", "--once", "--state", str(state))
    assert done["synced"]
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
    # What arrived before the kill (>= 24 MiB of ~42 MiB) is not sent again.
    assert done["last_sync_stats"]["uploaded_bytes"] < total - 16 * 1024 * 1024
    restored = tmp_path / "restored"
    admin.run(
        "cvd",
        "restore",
        done["cvd_id"],
        "--output",
        str(restored),
        "--special-files",
        "--same-owner",
    )
    assert describe(restored) == protected(describe(root))
