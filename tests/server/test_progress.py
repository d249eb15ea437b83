"""Agents' progress reports kept a moment and written together (``services/progress.py``).

A syncing agent reports its progress every second; written one transaction each, those
reports queued for SQLite's one writer behind bundles and commits, and the agent's poll
with them. Here they are answered from a read and written in one transaction per flush.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from lamina.config import ServerSettings
from lamina.db.engine import after_writes, read_tx, write_tx
from lamina.db.models import cvds, devices, events
from lamina.db.models import tasks as db_tasks
from lamina.errors import ForbiddenError
from lamina.protocol.schemas import HardwareFacts, TaskReport
from lamina.protocol.tasks import TaskState
from lamina.server.app import create_app, open_context
from lamina.server.security import Principal
from lamina.server.services import fleet, tasks
from lamina.server.services.progress import ProgressReports
from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve
from tests.server.test_agent_poll import active_devices

RUNNING, DONE, FAILED = TaskState.RUNNING, TaskState.DONE, TaskState.FAILED


def _writes(engine: Engine) -> Callable[[], int]:
    """How many write transactions ``engine`` has ended since this call."""
    count = [0]
    after_writes(engine, lambda: count.__setitem__(0, count[0] + 1))
    return lambda: count[0]


def _manual(engine: Engine) -> ProgressReports:
    """Reports written only when the test calls ``flush`` (no timer)."""
    return ProgressReports(engine, fleet.store_report, schedule=lambda _d, _f: None)


def _stored(engine: Engine, device: Principal) -> tuple[dict[str, object], object]:
    with read_tx(engine) as c:
        state = c.execute(select(devices.c.agent_state).where(devices.c.id == device.id)).scalar()
        progress = c.execute(select(cvds.c.progress).where(cvds.c.device_id == device.id)).scalar()
    return state or {}, progress


def test_n_syncing_agents_reporting_progress_make_one_write_transaction_per_flush(
    engine: Engine,
) -> None:
    pcs = active_devices(engine, 20)
    later = _manual(engine)
    writes = _writes(engine)
    for pc in pcs:  # the sync starts: a new state, stored at once
        fleet.agent_config(engine, pc, {"state": "syncing", "progress": {"files": 0}}, later=later)
    assert writes() == 20
    for files in range(1, 6):  # 100 progress reports: none written before its answer
        for pc in pcs:
            cfg = fleet.agent_config(
                engine, pc, {"state": "syncing", "progress": {"files": files}}, later=later
            )
            assert cfg.cvd_id is not None and cfg.policy is not None
    assert writes() == 20 and later.waiting() == 20
    assert _stored(engine, pcs[0])[1] == {"files": 0}
    assert later.flush() == 20  # the last of each device's, in one transaction
    assert writes() == 21
    for pc in pcs:
        state, progress = _stored(engine, pc)
        assert (state["state"], state["progress"], progress) == (
            "syncing",
            {"files": 5},
            {"files": 5},
        )
    assert later.flush() == 0 and writes() == 21  # nothing waits: no transaction


def test_a_state_change_is_stored_at_once_and_an_older_waiting_report_never_over_it(
    engine: Engine,
) -> None:
    (pc,) = active_devices(engine, 1)
    later = _manual(engine)
    fleet.agent_config(engine, pc, {"state": "syncing", "progress": {"files": 1}}, later=later)
    fleet.agent_config(engine, pc, {"state": "syncing", "progress": {"files": 2}}, later=later)
    assert later.waiting() == 1
    # The sync fails: stored before the answer, with its event.
    failed = {"state": "error", "last_error": "disk full", "progress": {}}
    fleet.agent_config(engine, pc, failed, later=later)
    state, progress = _stored(engine, pc)
    assert (state["state"], state["last_error"], progress) == ("error", "disk full", {})
    with read_tx(engine) as c:
        assert len(c.execute(select(events.c.id)).all()) == 1
    # The progress report that waited is older than the error: dropped, not written over it.
    assert later.flush() == 0
    assert _stored(engine, pc)[0]["state"] == "error"
    # New facts and a new hostname are stored at once too.
    facts = HardwareFacts(machine_id="m-pc1", hostname="pc1")
    fleet.agent_config(engine, pc, failed, later=later, facts=facts)
    fleet.agent_config(engine, pc, {**failed, "hostname": "renamed"}, later=later)
    assert later.waiting() == 0
    with read_tx(engine) as c:
        assert c.execute(select(devices.c.hostname)).scalar() == "renamed"


def test_a_restarted_agents_first_work_poll_opens_no_write_transaction(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/agent/work?restarted=true`` requeues a task cut short; with none, it only reads."""
    engine = sqlite_engine
    (pc,) = active_devices(engine, 1)

    def refuse(_engine: Engine) -> None:
        raise AssertionError("a poll opened a write transaction")

    monkeypatch.setattr(tasks, "write_tx", refuse)
    assert tasks.claim_for_device(engine, pc, "server-test", restarted=True) == []


def _settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(data=tmp_path / "data", port=free_port(), admin_password=ADMIN_PASSWORD)


def test_a_progress_report_is_answered_while_another_connection_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    ctx, _ = open_context(settings)
    ctx.progress = _manual(ctx.engine)
    for url in serve(settings, create_app(settings, ctx)):
        pc = Live(url, settings.data).device("pc1")
        syncing = {"state": "syncing", "progress": {"files": 1}}
        assert pc.client.post("/agent/config", json=syncing).status_code == 200
        holder = sqlite3.connect(settings.data / "lamina.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # SQLite's one write lock, held by another connection
        try:
            r = pc.client.post("/agent/config", json={**syncing, "progress": {"files": 2}})
            assert r.status_code == 200, r.text
            assert r.json()["cvd_id"] == pc.cvd_id and ctx.progress.waiting() == 1
        finally:
            holder.rollback()
            holder.close()
        # A reader sees it once written: here when the server stops.
        admin = Live(url, settings.data).login()
        assert admin.get("/cvds").json()[0]["progress"] == {"files": 1}
    with read_tx(ctx.engine) as c:
        assert c.execute(select(cvds.c.progress)).scalar() == {"files": 2}
    ctx.engine.dispose()


def test_a_waiting_progress_report_is_visible_after_a_flush(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ctx, _ = open_context(settings)
    ctx.progress = _manual(ctx.engine)
    for url in serve(settings, create_app(settings, ctx)):
        live = Live(url, settings.data)
        pc = live.device("pc1")
        admin = live.login()
        for files in (1, 2, 3):
            body = {"state": "syncing", "progress": {"files": files}}
            assert pc.client.post("/agent/config", json=body).status_code == 200
        assert admin.get("/cvds").json()[0]["progress"] == {"files": 1}
        assert ctx.progress.flush() == 1
        assert admin.get("/cvds").json()[0]["progress"] == {"files": 3}
        # A report still waiting when the sync commits is older than the commit: the
        # finished sync's CVD shows no progress, not that report's.
        body = {"state": "syncing", "progress": {"files": 4}}
        assert pc.client.post("/agent/config", json=body).status_code == 200
        pc.commit_files({b"a": [b"one"]})
        assert ctx.progress.flush() == 0
        assert admin.get("/cvds").json()[0]["progress"] == {}
    ctx.engine.dispose()


def test_progress_reports_are_written_by_the_timer_they_start(sqlite_engine: Engine) -> None:
    """The first waiting report schedules one flush; reports until it add none."""
    engine = sqlite_engine
    (pc,) = active_devices(engine, 1)
    due: list[Callable[[], None]] = []
    later = ProgressReports(engine, fleet.store_report, schedule=lambda _d, f: due.append(f))
    fleet.agent_config(engine, pc, {"state": "syncing", "progress": {"files": 1}}, later=later)
    for files in (2, 3):
        fleet.agent_config(
            engine, pc, {"state": "syncing", "progress": {"files": files}}, later=later
        )
    assert len(due) == 1
    due.pop()()
    assert _stored(engine, pc)[1] == {"files": 3} and later.waiting() == 0
    fleet.agent_config(engine, pc, {"state": "syncing", "progress": {"files": 4}}, later=later)
    assert len(due) == 1  # the next report starts the next one


def test_a_commit_landing_after_the_flush_read_its_cvd_keeps_its_empty_progress(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a commit can land between the flush's read of the CVD and its
    write: the write's own condition keeps the commit's emptied progress. Shown here by
    handing the flush the CVD as it was before the commit."""
    engine = sqlite_engine
    (pc,) = active_devices(engine, 1)
    with engine.begin() as c:
        stale = fleet.active_cvd(c, pc.id)
        assert stale is not None and stale.last_sync is None
        at = fleet.now()
        c.execute(
            cvds.update()
            .where(cvds.c.id == stale.id)
            .values(last_sync=at + dt.timedelta(seconds=1), progress={})
        )
    monkeypatch.setattr(fleet, "active_cvd", lambda c, device_id: stale)
    with engine.begin() as c:
        state = {"state": "syncing", "progress": {"files": 9}}
        fleet.store_report(c, pc.id, state, at, newer_only=True)
    assert _stored(engine, pc)[1] == {}


def test_a_report_the_database_refuses_does_not_hold_back_the_others(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    pcs = active_devices(engine, 3)
    bad = pcs[1].id

    def store(c: object, dev: str, rep: dict[str, object], at: object, newer: bool) -> bool:
        if dev == bad:
            raise ValueError("a value the database refuses")
        return fleet.store_report(c, dev, rep, at, newer)  # type: ignore[arg-type]

    later = ProgressReports(engine, store, schedule=lambda _d, _f: None)
    for i, pc in enumerate(pcs):
        later.put(pc.id, {"state": "syncing", "progress": {"files": i}})
    assert later.flush() == 2
    assert [_stored(engine, pc)[1] for pc in pcs] == [{"files": 0}, {}, {"files": 2}]
    assert later.waiting() == 0  # dropped, not retried for ever


def test_a_timer_that_cannot_start_is_tried_again_by_the_next_report(
    sqlite_engine: Engine,
) -> None:
    (pc,) = active_devices(engine := sqlite_engine, 1)
    started: list[Callable[[], None]] = []

    def schedule(_delay: float, fn: Callable[[], None]) -> None:
        if not started:
            started.append(fn)
            raise RuntimeError("can't start new thread")
        started.append(fn)

    later = ProgressReports(engine, fleet.store_report, schedule=schedule)
    with pytest.raises(RuntimeError):
        later.put(pc.id, {"state": "syncing", "progress": {"files": 1}})
    later.put(pc.id, {"state": "syncing", "progress": {"files": 2}})
    assert len(started) == 2
    started[1]()
    assert _stored(engine, pc)[1] == {"files": 2}


def _running_task(engine: Engine, device: Principal) -> str:
    with write_tx(engine) as c:
        tasks.enqueue(c, "sync", "admin", cvd_id=None, device_id=device.id)
    (item,) = tasks.claim_for_device(engine, device, "server-test")
    return item.task_id


def _task(engine: Engine, task_id: str) -> tuple[str, int, str]:
    with read_tx(engine) as c:
        r = c.execute(select(db_tasks).where(db_tasks.c.id == task_id)).one()
    return r.state, r.progress, r.message


def test_a_running_tasks_progress_is_kept_and_its_change_of_state_stored_at_once(
    engine: Engine,
) -> None:
    pcs = active_devices(engine, 3)
    ids = [_running_task(engine, pc) for pc in pcs]
    later = ProgressReports(engine, tasks.store_progress, schedule=lambda _d, _f: None)
    writes = _writes(engine)
    for pct in (10, 20, 30):  # 9 reports: none written before its answer
        for pc, tid in zip(pcs, ids, strict=True):
            rep = TaskReport(progress=pct, message=f"{pct}%", state=RUNNING)
            answer = tasks.report(engine, pc, tid, rep, later)
            assert (answer.state, answer.progress, answer.message) == (RUNNING, pct, f"{pct}%")
    assert writes() == 0 and later.waiting() == 3
    assert _task(engine, ids[0]) == (RUNNING, 0, "")
    assert later.flush() == 3 and writes() == 1  # one transaction for all of them
    assert [_task(engine, tid) for tid in ids] == [(RUNNING, 30, "30%")] * 3
    # A change of state is stored before its answer; the progress kept before it is older.
    tasks.report(engine, pcs[0], ids[0], TaskReport(progress=40, message="40%"), later)
    done = TaskReport(progress=100, message="synced", state=DONE, result={"files": 1})
    assert tasks.report(engine, pcs[0], ids[0], done, later).state == DONE
    assert writes() == 2 and _task(engine, ids[0]) == (DONE, 100, "synced")
    assert later.flush() == 0 and _task(engine, ids[0]) == (DONE, 100, "synced")
    # A report kept while another server stored the end (not dropped here): never over it.
    tasks.report(engine, pcs[1], ids[1], TaskReport(progress=50, message="50%"), later)
    tasks.report(engine, pcs[1], ids[1], TaskReport(progress=0, message="x", state=FAILED))
    assert later.flush() == 0 and _task(engine, ids[1]) == (FAILED, 0, "x")
    # Another device's task is refused, kept or not.
    with pytest.raises(ForbiddenError):
        tasks.report(engine, pcs[0], ids[2], TaskReport(progress=60), later)


def test_two_servers_kept_task_progress_lands_newest_last_whatever_the_flush_order(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers each keep the reports they took: the older of two reports, flushed
    last, is not written over the newer; nor over a change of state stored since."""
    ticks = iter(dt.datetime(2026, 12, 1, 10, 0, s, tzinfo=dt.UTC) for s in range(50))
    clock = lambda: next(ticks)  # noqa: E731 - one report, one distinct second
    monkeypatch.setattr("lamina.server.services.progress.now", clock)
    monkeypatch.setattr("lamina.server.services.tasks.now", clock)
    (pc,) = active_devices(engine, 1)
    tid = _running_task(engine, pc)
    a, b = (
        ProgressReports(engine, tasks.store_progress, schedule=lambda _d, _f: None) for _ in "ab"
    )
    tasks.report(engine, pc, tid, TaskReport(progress=10, message="10%"), a)
    tasks.report(engine, pc, tid, TaskReport(progress=20, message="20%"), b)
    assert b.flush() == 1 and a.flush() == 0
    assert _task(engine, tid) == (RUNNING, 20, "20%")
    # A kept 30%; then B took "waiting" and "running again" at once: 30% is older.
    tasks.report(engine, pc, tid, TaskReport(progress=30, message="30%"), a)
    tasks.report(engine, pc, tid, TaskReport(progress=35, message="w", state=TaskState.WAITING), b)
    tasks.report(engine, pc, tid, TaskReport(progress=0, message="again", state=RUNNING), b)
    assert a.flush() == 0 and _task(engine, tid) == (RUNNING, 0, "again")


def test_a_running_tasks_progress_is_visible_after_the_server_stops(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ctx, _ = open_context(settings)
    ctx.task_progress = ProgressReports(
        ctx.engine, tasks.store_progress, schedule=lambda _d, _f: None
    )
    for url in serve(settings, create_app(settings, ctx)):
        pc = Live(url, settings.data).device("pc1")
        with write_tx(ctx.engine) as c:
            device_id = c.execute(select(cvds.c.device_id)).scalar()
            tasks.enqueue(c, "sync", "admin", cvd_id=pc.cvd_id, device_id=device_id)
        (item,) = pc.client.get("/agent/work").json()
        r = pc.client.post(f"/agent/tasks/{item['task_id']}", json={"progress": 42})
        assert r.status_code == 200 and r.json()["progress"] == 42
        assert _task(ctx.engine, item["task_id"]) == (RUNNING, 0, "")
        assert ctx.task_progress.waiting() == 1
    assert _task(ctx.engine, item["task_id"]) == (RUNNING, 42, "")
    ctx.engine.dispose()
