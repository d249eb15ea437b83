"""The CVD lifecycle through the CLI: enroll two endpoints, centralize, sync, change, sync,
restore an old version, revert system-only keeping user data, archive; store clean afterwards.
Runs on the embedded default and on PostgreSQL + S3 with two servers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.cli.corpus import describe
from tests.e2e.conftest import Deployment, Lamina
from tests.e2e.endpoints import make_endpoint, protected


def test_cvd_lifecycle(
    deployment: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(deployment.url)
    session = Path(admin.env["XDG_CONFIG_HOME"]) / "lamina/login.json"
    assert session.stat().st_mode & 0o777 == 0o600  # it holds a bearer token
    admin.run("policy", "create", "standard", "--interval", "1h", "--keep-last", "10")
    token = admin.json("token", "create", "--expires", "1h", "--uses", "2")["token"]

    # Two endpoints enroll, each through its own server of the deployment.
    roots, states, agents = {}, {}, {}
    for i, (host, user) in enumerate([("desk-01", "alice"), ("desk-02", "bob")]):
        roots[host] = make_endpoint(tmp_path / host, host, user)
        states[host] = tmp_path / f"{host}-state"
        agents[host] = person(f"agent-{host}")
        agents[host].run(
            "agent",
            "enroll",
            "--server",
            deployment.url_for(i),
            "--token",
            token,
            "--root",
            str(roots[host]),
            "--state",
            str(states[host]),
        )
        assert (states[host] / "agent.json").stat().st_mode & 0o777 == 0o600
    pending = admin.json("device", "list", "--pending")
    assert sorted(d["hostname"] for d in pending) == ["desk-01", "desk-02"]
    shown = [admin.json("device", "show", d["id"]) for d in pending]
    assert shown[0]["facts"]["os_release"]["ID"] == "debian"
    assert all(len(d["facts"]["machine_id"]) == 32 for d in shown)

    # Before centralization an agent has nothing to do.
    idle = agents["desk-01"].json("agent", "run", "--once", "--state", str(states["desk-01"]))
    assert idle["synced"] is False

    for host in roots:
        cvd = admin.json("cvd", "centralize", host, "--policy", "standard")
        assert cvd["state"] == "active" and cvd["policy"] == "standard"
    assert admin.json("device", "list", "--pending") == []

    # Centralization: the first upload of each endpoint.
    first = agents["desk-01"].json("agent", "run", "--once", "--state", str(states["desk-01"]))
    assert first["synced"] and first["state"] == "idle" and first["last_sync"]
    stored_after_one = admin.json("store", "stats", *deployment.store_args)["pack_bytes"]
    second = agents["desk-02"].json("agent", "run", "--once", "--state", str(states["desk-02"]))
    # Cross-endpoint dedup: desk-02's OS files were already stored by desk-01. It uploads
    # them again (a device is told only about its own CVD's blobs: no content oracle), and
    # the server writes them again as surplus copies (so neither the upload's time nor the
    # store's size tells desk-02 that desk-01 held them); a gc keeps one copy.
    stored_after_two = admin.json("store", "stats", *deployment.store_args)["pack_bytes"]
    assert second["last_sync_stats"]["uploaded_bytes"] > 0
    assert stored_after_two - stored_after_one > stored_after_one / 2
    admin.run("store", "gc", *deployment.store_args)
    stored_after_gc = admin.json("store", "stats", *deployment.store_args)["pack_bytes"]
    assert stored_after_gc - stored_after_one < stored_after_one / 3

    status = agents["desk-01"].json("agent", "status", "--state", str(states["desk-01"]))
    assert status["cvd_id"] and status["last_snapshot"]
    cvds = {c["name"]: c for c in admin.json("cvd", "list")}
    assert cvds["desk-01"]["snapshots"] == 1 and cvds["desk-01"]["last_sync"]

    out = tmp_path / "restore-full"
    admin.run("cvd", "restore", "desk-01", "--output", str(out), "--special-files", "--same-owner")
    assert describe(out) == protected(describe(roots["desk-01"]))
    assert not (out / "var/log/syslog").exists() and (out / "var/log").is_dir()

    # Change files; the admin asks for a sync now; the agent does it on its next cycle.
    root = roots["desk-01"]
    conf = root / "etc/app/app.conf"
    conf.write_text("[main]\nmode = broken\n")
    thesis = root / "home/alice/Documents/thesis.txt"
    thesis.write_text("alice's thesis, draft 2\n")
    (root / "home/alice/Documents/new.txt").write_text("brand new\n")
    task = admin.json("cvd", "sync", "desk-01")
    assert task["state"] == "queued"
    cycle = agents["desk-01"].json("agent", "run", "--once", "--state", str(states["desk-01"]))
    assert cycle["synced"] and cycle["last_sync_stats"]["files_read"] == 3
    done = admin.json("task", "show", task["id"])
    assert done["state"] == "done" and done["progress"] == 100
    snaps = admin.json("cvd", "snapshots", "desk-01")
    assert len(snaps) == 2 and snaps[0]["time"] < snaps[1]["time"]

    # Browse the old snapshot read-only, and restore the old version of one file.
    listing = admin.json(
        "cvd", "ls", "desk-01", "--snapshot", snaps[0]["id"], "home/alice/Documents"
    )
    assert {"thesis.txt", "photo.raw"} <= {e["name"] for e in listing}
    old = tmp_path / "old-version"
    admin.run(
        "cvd",
        "restore",
        "desk-01",
        "--snapshot",
        snaps[0]["id"][:12],
        "--path",
        "home/alice/Documents/thesis.txt",
        "--output",
        str(old),
    )
    assert (
        (old / "home/alice/Documents/thesis.txt").read_text().startswith("alice's thesis, draft 1")
    )
    assert not (old / "etc").exists()

    # Restore onto the endpoint itself: the current file is kept beside it.
    t = admin.json(
        "cvd",
        "restore",
        "desk-01",
        "--snapshot",
        snaps[0]["id"],
        "--path",
        "home/alice/Documents/thesis.txt",
        "--to-endpoint",
    )
    agents["desk-01"].run("agent", "run", "--once", "--state", str(states["desk-01"]))
    assert admin.json("task", "show", t["id"])["state"] == "done"
    assert thesis.read_text().startswith("alice's thesis, draft 1")
    kept = list(thesis.parent.glob("thesis.txt.lamina-*"))
    assert len(kept) == 1 and kept[0].read_text() == "alice's thesis, draft 2\n"
    thesis.write_text("alice's thesis, draft 3\n")

    # Revert system-only to the first snapshot: staged now, applied at boot, user data kept.
    identity = (root / "etc/machine-id").read_text()
    (root / "etc/machine-id").write_text("rotated-identity\n")
    (root / "usr/bin/tool-added").write_text("installed after the snapshot\n")
    t = admin.json("cvd", "revert", "desk-01", "--snapshot", snaps[0]["id"])
    agents["desk-01"].run("agent", "run", "--once", "--state", str(states["desk-01"]))
    task = admin.json("task", "show", t["id"])
    assert task["state"] == "waiting" and task["result"]["operations"] >= 2
    assert conf.read_text() == "[main]\nmode = broken\n"  # nothing moves before the boot
    st = agents["desk-01"].json("agent", "status", "--state", str(states["desk-01"]))
    assert st["state"] == "waiting for reboot" and st["staged"]
    agents["desk-01"].run("agent", "boot", "--state", str(states["desk-01"]))
    assert conf.read_text() == "[main]\nmode = production\nworkers = 4\n"  # system reverted
    assert not (root / "usr/bin/tool-added").exists()
    assert thesis.read_text() == "alice's thesis, draft 3\n"  # user data kept as it is now
    assert (root / "home/alice/Documents/new.txt").exists()
    assert (
        root / "etc/machine-id"
    ).read_text() == "rotated-identity\n"  # identity is the machine's
    assert identity != "rotated-identity\n"
    assert (
        agents["desk-01"].json("agent", "status", "--state", str(states["desk-01"]))["staged"] == []
    )
    agents["desk-01"].run("agent", "run", "--once", "--state", str(states["desk-01"]))
    assert (
        admin.json("task", "show", t["id"])["state"] == "done"
    )  # reported once the boot applied it

    # Archive desk-02: detached, read-only, still restorable.
    arch = admin.json("cvd", "archive", "desk-02")
    assert arch["state"] == "archived"
    p = agents["desk-02"].run(
        "agent", "run", "--once", "--sync", "--state", str(states["desk-02"]), ok=False
    )
    assert p.returncode != 0 and "error:" in p.stderr
    out2 = tmp_path / "restore-archived"
    admin.run("cvd", "restore", "desk-02", "--output", str(out2), "--special-files", "--same-owner")
    assert describe(out2) == protected(describe(roots["desk-02"]))
    devices = {d["hostname"]: d for d in admin.json("device", "list")}
    assert devices["desk-02"]["status"] == "archived"

    # The audit log saw the admin's actions.
    actions = {a["action"] for a in admin.json("user", "audit", "--limit", "200")}
    assert {
        "policy.create",
        "token.create",
        "cvd.centralize",
        "cvd.sync",
        "cvd.revert",
        "cvd.archive",
    } <= actions

    for s in deployment.servers:
        s.stop()
    chk = admin.run("store", "check", "--read-data", *deployment.store_args)
    assert "no errors" in chk.stdout
