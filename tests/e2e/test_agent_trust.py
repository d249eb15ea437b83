"""The agent under hostile or broken conditions, with a real `lamina server` and real agents.

Review findings 10, 12 and 14 end to end, task cancel, one agent per state folder,
re-enrolling, and a credential the server refuses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import update

from lamina.agent.state import StateLock
from lamina.db import models
from lamina.db.engine import make_engine, write_tx
from lamina.server.services import tasks
from tests.e2e.conftest import Deployment, Lamina
from tests.e2e.endpoints import make_endpoint


def scramble_in_place(path: Path) -> None:
    """Ransomware that keeps size and mtime."""
    st = os.stat(path)
    path.write_bytes(bytes(b ^ 0x5A for b in path.read_bytes()))
    os.chmod(path, 0o666)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_agent_survives_poison_tasks_verifies_restores_and_honours_cancel(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "standard", "--interval", "1h")
    token = admin.json("token", "create", "--expires", "1h")["token"]
    root = make_endpoint(tmp_path / "desk", "desk-01", "alice")
    state = tmp_path / "desk-state"
    agent = person("agent")
    enroll = ["agent", "enroll", "--server", embedded.url, "--token", token, "--root", str(root)]
    agent.run(*enroll, "--state", str(state))

    # Re-enrolling a state folder that holds a credential is refused without --force.
    again = agent.run(*enroll, "--state", str(state), ok=False)
    assert again.returncode == 4 and "--force" in again.stderr
    cred = json.loads((state / "agent.json").read_text())["credential"]

    admin.run("cvd", "centralize", "desk-01", "--policy", "standard")
    run_once = ["agent", "run", "--once", "--state", str(state)]
    assert agent.json(*run_once)["synced"]

    # A second agent on the same state folder refuses with a clear error.
    lock = StateLock(state)
    try:
        second = agent.run(*run_once, ok=False)
    finally:
        lock.release()
    assert second.returncode == 4 and "another lamina agent" in second.stderr

    # Finding 14: a task that cannot run (here a malformed tree id, written past the
    # server's own validation) is failed at the claim, and the next task still runs.
    device = agent.json("agent", "status", "--state", str(state))["device_id"]
    engine = make_engine(f"sqlite:///{embedded.servers[0].data / 'lamina.db'}")
    try:
        with write_tx(engine) as c:
            poison = tasks.enqueue(c, "sync", "test", device_id=device)
            c.execute(
                update(models.tasks)
                .where(models.tasks.c.id == poison)
                .values(kind="restore", params={"snapshot": "s", "root": "zz", "paths": ["etc"]})
            )
    finally:
        engine.dispose()
    sync = admin.json("cvd", "sync", "desk-01")
    done = agent.json(*run_once)
    assert [t["id"] for t in done["tasks"]] == [sync["id"]]  # the poison never handed out
    failed = admin.json("task", "show", poison)
    assert failed["state"] == "failed"
    assert "malformed parameters of a restore task: root" in failed["message"]
    assert admin.json("task", "show", sync["id"])["state"] == "done"

    # The server refuses to queue a restore of the endpoint's whole root.
    for bad in ([], ["/"]):
        paths = [a for p in bad for a in ("--path", p)]
        refused = admin.run("cvd", "restore", "desk-01", *paths, "--to-endpoint", ok=False)
        assert refused.returncode == 2, refused.stderr

    # Finding 17: an admin's --output restore as root keeps no setuid bit and no owner
    # from the endpoint's tree unless asked.
    out = tmp_path / "download"
    admin.run(
        "cvd", "restore", "desk-01", "--path", "usr/bin", "--path", "home", "--output", str(out)
    )
    assert (root / "usr/bin/tool").stat().st_mode & 0o7777 == 0o4755
    assert (out / "usr/bin/tool").stat().st_mode & 0o7777 == 0o755
    assert (root / "home/alice/Documents/thesis.txt").stat().st_uid == 1000
    assert (out / "home/alice/Documents/thesis.txt").stat().st_uid == 0

    # Finding 12: in-place damage that keeps size and mtime is repaired by --overwrite.
    thesis = root / "home/alice/Documents/thesis.txt"
    good = thesis.read_bytes()
    scramble_in_place(thesis)
    t = admin.json(
        "cvd", "restore", "desk-01", "--path", "home/alice/Documents/thesis.txt",
        "--to-endpoint", "--overwrite",
    )  # fmt: skip
    agent.run(*run_once)
    assert admin.json("task", "show", t["id"])["state"] == "done"
    assert thesis.read_bytes() == good and thesis.stat().st_mode & 0o777 == 0o644

    # Finding 10: the folder on the restored path is now a symlink to a root-only
    # folder; the keep-aside rename must not reach through it.
    outside = tmp_path / "outside-etc"
    outside.mkdir(mode=0o700)
    (outside / "thesis.txt").write_text("root's file\n")
    docs = root / "home/alice/Documents"
    docs.rename(root / "home/alice/Documents.old")
    docs.symlink_to(outside)
    t = admin.json(
        "cvd", "restore", "desk-01", "--path", "home/alice/Documents/thesis.txt", "--to-endpoint"
    )
    agent.run(*run_once)
    assert admin.json("task", "show", t["id"])["state"] == "done"
    assert sorted(os.listdir(outside)) == ["thesis.txt"]
    assert (outside / "thesis.txt").read_text() == "root's file\n"
    assert not docs.is_symlink() and (docs / "thesis.txt").read_bytes() == good

    # Task cancel: a staged revert cancelled before the boot is dropped by the agent.
    (root / "etc/machine-id").write_text("rotated-identity\n")
    t = admin.json("cvd", "revert", "desk-01", "--snapshot", "latest")
    agent.run(*run_once)
    assert admin.json("task", "show", t["id"])["state"] == "waiting"
    assert agent.json("agent", "status", "--state", str(state))["staged"]
    assert admin.json("task", "cancel", t["id"])["state"] == "cancelled"
    agent.run(*run_once)
    status = agent.json("agent", "status", "--state", str(state))
    assert status["staged"] == [] and status["state"] == "idle"
    assert agent.json("agent", "boot", "--state", str(state)) == []  # nothing left to apply
    assert (root / "etc/machine-id").read_text() == "rotated-identity\n"
    assert admin.json("task", "show", t["id"])["state"] == "cancelled"
    # A queued task cancelled before the agent polls is never handed out.
    q = admin.json("cvd", "sync", "desk-01")
    admin.run("task", "cancel", q["id"])
    assert agent.json(*run_once)["tasks"] == []
    running = admin.run("task", "cancel", q["id"], ok=False)
    assert running.returncode == 4

    # A credential the server does not know: one line, exit 1.
    doc = json.loads((state / "agent.json").read_text())
    doc["credential"] = "not-" + cred
    (state / "agent.json").write_text(json.dumps(doc))
    refused = agent.run(*run_once, ok=False)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused this agent's credential" in lines[0]
