"""Store maintenance as server tasks (``services/store_ops.py``, ``api/store.py``): check,
gc (a dry run that changes nothing, then the real one) and stats run the CLI's functions
on the server's store and end with its report; only administrators start them; a failure
ends the task failed with an event; a task a dead server left running is failed at start."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import create_engine

from lamina import processes
from lamina.config import ServerSettings
from lamina.db.engine import read_tx, write_tx
from lamina.db.models import events, tasks
from lamina.errors import ConflictError, ForbiddenError
from lamina.protocol.tasks import StoreCheckParams, StoreGcParams, TaskKind
from lamina.server.app import open_context
from lamina.server.security import ROLES, Principal
from lamina.server.services import store_ops
from lamina.server.services.common import new_id, now
from lamina.store.blob import BlobKind
from lamina.tree.model import Entry, encode_tree
from tests.server.conftest import ADMIN_PASSWORD, Live


def _run(admin: httpx.Client, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start a store task through the API, wait for its thread, and read it back."""
    r = admin.post(path, json=body) if body is not None else admin.post(path)
    assert r.status_code == 202, r.text
    tid = r.json()["id"]
    store_ops.wait(tid)
    out: dict[str, Any] = admin.get(f"/tasks/{tid}").json()
    return out


def test_check_gc_and_stats_run_on_the_servers_store_as_tasks_for_admins_only(
    live: Live,
) -> None:
    admin = live.login()
    dev = live.device("pc-1")
    kept = b"kept " * 2000
    # Two files of the same content: the snapshot describes twice what the store keeps.
    [data] = dev.upload([(BlobKind.DATA, kept)])
    entries = [Entry(n, "file", size=len(kept), content=[data]) for n in (b"a.txt", b"b.txt")]
    [root] = dev.upload([(BlobKind.TREE, encode_tree(entries))])
    r = dev.client.post(
        "/agent/commit", json={"root": root.hex(), "files": 2, "bytes": 2 * len(kept)}
    )
    assert r.status_code == 200, r.text
    garbage = os.urandom(300_000)  # a pack of its own that no snapshot names
    dev.upload([(BlobKind.DATA, garbage)])

    dry = _run(admin, "/store/gc", {"dry_run": True})
    assert dry["kind"] == "store-gc" and dry["state"] == "done", dry
    assert dry["result"]["dry_run"] and dry["result"]["condemned"] >= 1
    would = dry["result"]["bytes_freed"]
    assert would >= 300_000 * 0.9  # random bytes do not compress
    assert "would free" in dry["message"]
    before = _run(admin, "/store/stats")["result"]

    # The dry run changed nothing: the real one frees what it said.
    done = _run(admin, "/store/gc", {"dry_run": False, "orphan_grace": 3600})
    assert done["state"] == "done" and not done["result"]["dry_run"], done
    assert done["result"]["bytes_freed"] == would
    after = _run(admin, "/store/stats")
    assert after["state"] == "done" and after["progress"] == 100
    st = after["result"]
    assert st["packs"] < before["packs"] and done["result"]["packs_deleted"] >= 1
    assert st["pack_bytes"] < before["pack_bytes"] - 250_000
    assert sum(b["packs"] for b in st["pack_histogram"]) == st["packs"]
    assert st["snapshots"] == 1 and st["logical_bytes"] == 2 * len(kept)
    assert st["dedup_ratio"] == round(st["logical_bytes"] / st["raw_bytes"], 3)
    assert 1 < st["dedup_ratio"] < 2  # the tree's bytes count as kept too

    check = _run(admin, "/store/check", {"read_data": True})
    assert check["state"] == "done" and check["result"]["ok"], check
    assert check["result"]["bytes_read"] > 0 and check["result"]["errors"] == []

    # Read-only and help desk are refused every store route, and start nothing.
    for role in ("readonly", "helpdesk"):
        c = live.user(role, role)
        for path in ("/store/check", "/store/gc", "/store/stats"):
            assert c.post(path, json={}).status_code == 403, (path, role)
    actions = [(e["actor"], e["action"]) for e in live.audit()]
    for action in ("store.gc", "store.stats", "store.check"):
        assert ("admin", action) in actions
    assert not [a for a in actions if a[0] != "admin" and a[1].startswith("store.")]

    # Damage in a pack: the check fails, with its report and an error event.
    for p in (live.data / "store").rglob("packs/*/*"):
        p.write_bytes(b"\0" * p.stat().st_size)
    t = _run(admin, "/store/check", {"read_data": True})
    assert t["state"] == "failed" and not t["result"]["ok"]
    assert t["result"]["errors_total"] >= 1 and "damaged" in t["message"]
    shown = admin.get("/events").json()
    assert any(e["target"] == "store" and "store-check" in e["message"] for e in shown)


def _principal(role: str) -> Principal:
    return Principal("user", new_id(), role, role, ROLES[role])


def _running_store_task(
    engine: Any, tid: str, kind: str, claimed_by: str, reported: dt.datetime
) -> None:
    with write_tx(engine) as c:
        c.execute(
            tasks.insert().values(
                id=tid,
                kind=kind,
                state="running",
                progress=40,
                message="marking",
                params={},
                result={},
                created_by="admin",
                created=reported,
                started=reported,
                reported=reported,
                claimed_by=claimed_by,
            )
        )


def test_one_store_task_at_a_time_and_a_dead_servers_task_is_failed_at_start(
    tmp_path: Path,
) -> None:
    settings = ServerSettings(data=tmp_path / "data", admin_password=ADMIN_PASSWORD)
    ctx, _ = open_context(settings)
    admin = _principal("administrator")
    for role in ("readonly", "helpdesk"):
        with pytest.raises(ForbiddenError):
            store_ops.queue(ctx.engine, _principal(role), TaskKind.STORE_CHECK, StoreCheckParams())
    first = store_ops.queue(ctx.engine, admin, TaskKind.STORE_GC, StoreGcParams())
    with pytest.raises(ConflictError, match="still running"):
        store_ops.queue(ctx.engine, admin, TaskKind.STORE_CHECK, StoreCheckParams())
    assert store_ops.run(ctx.engine, ctx.store, first.id).state == "done"

    # Tasks this host's server processes left running when they died: one whose pid is
    # gone, one whose pid a later process holds now (a restart or a reboot reuses pids),
    # one of the older form (a pid alone) naming this very process's pid; and one this
    # live process runs. The next start fails all but the last.
    gone = subprocess.Popen(["sleep", "600"])
    dead = processes.identity(gone.pid)
    gone.kill()
    gone.wait()
    later = subprocess.Popen(["sleep", "600"])
    host, pid, boot, start, place = processes.identity(later.pid).split(":")
    claims = {
        "dead-task": f"server@{dead}",
        "reused-task": f"server@{host}:{pid}:{boot}:{int(start) - 1}:{place}",
        "old-form-task": f"server@{socket.gethostname()}:{os.getpid()}",
        "live-task": store_ops._worker(),
    }
    for tid, claimed in claims.items():
        _running_store_task(ctx.engine, tid, TaskKind.STORE_STATS, claimed, now())
    ctx.store.close()
    try:
        ctx, _ = open_context(settings)
    finally:
        later.kill()
        later.wait()
    with read_tx(ctx.engine) as c:
        states = dict(c.execute(tasks.select().with_only_columns(tasks.c.id, tasks.c.state)).all())
        assert not c.execute(events.select()).first()  # a restart is not a failed check
    assert states == {
        first.id: "done",
        "dead-task": "failed",
        "reused-task": "failed",
        "old-form-task": "failed",
        "live-task": "running",
    }
    ctx.store.close()


def test_a_store_task_whose_server_stopped_reporting_is_failed_by_the_next_start(
    live: Live,
) -> None:
    """A server on another host that died during a store task may never start again
    (``recover`` only fails this host's): its task stayed ``running`` and refused every
    store task until the row was edited by hand. A running store task not reported for
    ``STALE`` is now failed, with an event, by the next start through the API; one whose
    server still reports blocks as before."""
    admin = live.login()
    engine = create_engine(f"sqlite:///{live.data / 'lamina.db'}")
    fresh = now() - dt.timedelta(minutes=1)
    stale = now() - store_ops.STALE - dt.timedelta(minutes=1)
    try:
        _running_store_task(engine, "dead-gc", TaskKind.STORE_GC, "server@db2:4242:b:1:ns", stale)
        _running_store_task(
            engine, "live-check", TaskKind.STORE_CHECK, "server@db3:77:b:1:ns", fresh
        )
        r = admin.post("/store/stats")
        assert r.status_code == 409 and "live-check" in r.text, r.text  # its server reports
        dead = admin.get("/tasks/dead-gc").json()
        assert dead["state"] == "failed"
        assert "process 4242 on db2 has not reported this task" in dead["message"], dead
        # its server was only cut off: the outcome it records late leaves the row failed
        store_ops._finish(engine, "dead-gc", True, "collected", {})
        assert admin.get("/tasks/dead-gc").json()["message"] == dead["message"]
        # the live one's server stops too: the next start fails it and runs
        with write_tx(engine) as c:
            c.execute(tasks.update().where(tasks.c.id == "live-check").values(reported=stale))
        t = _run(admin, "/store/stats")
        assert t["state"] == "done", t
        assert admin.get("/tasks/live-check").json()["state"] == "failed"
        shown = [e["message"] for e in admin.get("/events").json()]
        assert sum("has not reported this task" in m for m in shown) == 2, shown
    finally:
        engine.dispose()


class _Beats:
    """A stop event for ``_beat`` that lets it beat ``n`` times, then stops it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def wait(self, _timeout: float) -> bool:
        self.n -= 1
        return self.n < 0


def test_a_running_store_task_is_reported_by_its_server_until_it_ends(tmp_path: Path) -> None:
    """What keeps a long store task (a gc of a large store) from being taken for a dead
    server's: its server writes the row's ``reported`` while it runs (``_beat``), not once
    it has ended; and a task so reported blocks the next start, is not failed by it."""
    settings = ServerSettings(data=tmp_path / "data", admin_password=ADMIN_PASSWORD)
    ctx, _ = open_context(settings)
    stale = now() - store_ops.STALE - dt.timedelta(minutes=1)
    _running_store_task(ctx.engine, "long-gc", TaskKind.STORE_GC, store_ops._worker(), stale)
    _running_store_task(ctx.engine, "ended", TaskKind.STORE_GC, store_ops._worker(), stale)
    with write_tx(ctx.engine) as c:
        c.execute(tasks.update().where(tasks.c.id == "ended").values(state="done"))

    def reported(tid: str) -> dt.datetime:
        with read_tx(ctx.engine) as c:
            at = c.execute(tasks.select().where(tasks.c.id == tid)).one().reported
        return at if at.tzinfo else at.replace(tzinfo=dt.UTC)

    admin = _principal("administrator")
    try:
        # stale, but its server is this process, which certainly runs: left running
        with pytest.raises(ConflictError, match="still running"):
            store_ops.queue(ctx.engine, admin, TaskKind.STORE_CHECK, StoreCheckParams())
        with read_tx(ctx.engine) as c:
            assert c.execute(tasks.select().where(tasks.c.id == "long-gc")).one().state == "running"
        store_ops._beat(ctx.engine, "long-gc", cast(threading.Event, _Beats(1)), 0)
        store_ops._beat(ctx.engine, "ended", cast(threading.Event, _Beats(3)), 0)
        assert reported("long-gc") > now() - store_ops.STALE
        assert reported("ended") < now() - store_ops.STALE
        with pytest.raises(ConflictError, match="long-gc"):
            store_ops.queue(ctx.engine, admin, TaskKind.STORE_CHECK, StoreCheckParams())
        with read_tx(ctx.engine) as c:
            assert c.execute(tasks.select().where(tasks.c.id == "long-gc")).one().state == "running"
    finally:
        ctx.store.close()


def test_a_store_task_started_through_the_api_is_reported_while_it_runs(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat runs beside the task's own thread (``start``, ``_thread``): a stats
    task held open here (its work waits for the test) has its ``reported`` moved forward
    from a stale time, so no other server fails it."""
    gate = threading.Event()

    def held_stats(engine: Any, store: Any) -> tuple[bool, str, dict[str, Any]]:
        assert gate.wait(120)
        return True, "counted", {}

    monkeypatch.setattr(store_ops, "_stats", held_stats)
    monkeypatch.setattr(store_ops, "HEARTBEAT", 0.01)
    admin = live.login()
    engine = create_engine(f"sqlite:///{live.data / 'lamina.db'}")
    stale = now() - store_ops.STALE - dt.timedelta(minutes=1)
    try:
        r = admin.post("/store/stats")
        assert r.status_code == 202, r.text
        tid = r.json()["id"]
        with write_tx(engine) as c:
            c.execute(tasks.update().where(tasks.c.id == tid).values(reported=stale))
        deadline = time.monotonic() + 60  # (a bound on the wait, not a figure)
        while time.monotonic() < deadline:
            with read_tx(engine) as c:
                at = c.execute(tasks.select().where(tasks.c.id == tid)).one().reported
            if (at if at.tzinfo else at.replace(tzinfo=dt.UTC)) > stale:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the running task's server never reported it")
        gate.set()
        store_ops.wait(tid)
        assert admin.get(f"/tasks/{tid}").json()["state"] == "done"
    finally:
        gate.set()
        engine.dispose()
