"""Revert through the CLI, the server and a real agent: dry run, what a revert may remove,
and a boot that fails being reported as the task's failure (review findings 2, 3, 6)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import Deployment, Lamina
from tests.e2e.endpoints import make_endpoint


def test_revert_dry_run_then_revert_then_failed_boot(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "nodata", "--exclude", "/data/**")
    token = admin.json("token", "create", "--expires", "1h", "--policy", "nodata")["token"]
    root, state = make_endpoint(tmp_path / "desk", "desk", "ann"), tmp_path / "desk-state"
    (root / "data").mkdir()
    (root / "data/customer.db").write_text("customers, never backed up\n")
    agent = person("agent")
    agent.run(
        "agent", "enroll", "--server", embedded.url, "--token", token,
        "--root", str(root), "--state", str(state),
    )  # fmt: skip
    agent.run("agent", "run", "--once", "--state", str(state))
    [snap] = admin.json("cvd", "snapshots", "desk")
    conf = root / "etc/app/app.conf"
    conf.write_text("[main]\nmode = broken\n")
    (root / "usr/bin/tool-added").write_text("installed after the snapshot\n")
    (root / "data/new.db").write_text("new customers\n")

    t = admin.json("cvd", "revert", "desk", "--snapshot", snap["id"], "--dry-run")
    agent.run("agent", "run", "--once", "--state", str(state))
    dry = admin.json("task", "show", t["id"])
    assert dry["state"] == "done", dry
    assert dry["result"]["update"] == ["etc/app/app.conf"]
    assert dry["result"]["remove"] == ["usr/bin/tool-added"]
    assert conf.read_text() == "[main]\nmode = broken\n"  # a dry run changes nothing

    t = admin.json("cvd", "revert", "desk", "--snapshot", snap["id"])
    agent.run("agent", "run", "--once", "--state", str(state))
    task = admin.json("task", "show", t["id"])
    assert task["state"] == "waiting" and task["result"]["remove"] == ["usr/bin/tool-added"]
    agent.run("agent", "boot", "--state", str(state))
    assert conf.read_text() == "[main]\nmode = production\nworkers = 4\n"
    assert not (root / "usr/bin/tool-added").exists()
    assert (root / "data/customer.db").exists() and (root / "data/new.db").exists()
    agent.run("agent", "run", "--once", "--state", str(state))
    assert admin.json("task", "show", t["id"])["state"] == "done"

    # A boot that cannot apply (a folder swapped for a symlink) rolls back and fails the task.
    conf.write_text("[main]\nmode = broken again\n")
    t = admin.json("cvd", "revert", "desk", "--snapshot", snap["id"])
    agent.run("agent", "run", "--once", "--state", str(state))
    outside = tmp_path / "outside"
    shutil.copytree(root / "etc/app", outside)
    shutil.rmtree(root / "etc/app")
    os.symlink(outside, root / "etc/app")
    agent.run("agent", "boot", "--state", str(state))
    assert (outside / "app.conf").read_text() == "[main]\nmode = broken again\n"
    agent.run("agent", "run", "--once", "--state", str(state))
    failed = admin.json("task", "show", t["id"])
    assert failed["state"] == "failed" and "symlink" in failed["message"]
