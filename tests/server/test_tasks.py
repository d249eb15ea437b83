"""Workers claim tasks atomically: on SQLite, and on PostgreSQL with many claimers at once."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import tasks as tasks_table
from lamina.errors import ConflictError, ForbiddenError, UsageError
from lamina.protocol.schemas import TaskReport
from lamina.protocol.tasks import RestoreParams, RevertParams, SyncParams
from lamina.server.security import Principal
from lamina.server.services import tasks

ROOT = "ab" * 32
RESTORE = RestoreParams(snapshot="s1", root=ROOT, paths=["etc"])


def test_each_task_is_claimed_exactly_once(engine: Engine) -> None:
    device = Principal("device", "dev-1", "device one")
    with write_tx(engine) as c:
        ids = {tasks.enqueue(c, "sync", "admin", device_id="dev-1") for _ in range(40)}
        tasks.enqueue(c, "sync", "admin", device_id="dev-2")  # another device's: never claimed here
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        got = tasks.claim_for_device(engine, device, f"worker-{n}")
        with lock:
            claimed.extend(w.task_id for w in got)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # all of them, none twice
    assert tasks.claim_for_device(engine, device, "late") == []
    admin = Principal("user", "u", "admin", "administrator", frozenset({"read"}))
    assert {t.state for t in tasks.list_tasks(engine, admin) if t.device_id == "dev-1"} == {
        "running"
    }


def test_a_task_cut_short_by_an_agent_restart_is_claimed_again(engine: Engine) -> None:
    device = Principal("device", "dev-9", "device nine")
    with write_tx(engine) as c:
        tid = tasks.enqueue(c, "restore", "admin", device_id="dev-9", params=RESTORE)
    assert [w.task_id for w in tasks.claim_for_device(engine, device, "first")] == [tid]
    # The agent died mid-task; when it asks for work again, the task comes back.
    assert tasks.claim_for_device(engine, device, "same process") == []
    assert [
        w.task_id for w in tasks.claim_for_device(engine, device, "second", restarted=True)
    ] == [tid]


def test_a_task_that_kills_its_agent_at_every_start_fails_after_max_attempts(
    engine: Engine,
) -> None:
    """Finding 14: the restart re-queue must not loop forever on a poison task."""
    device = Principal("device", "dev-p", "poisoned")
    with write_tx(engine) as c:
        poison = tasks.enqueue(c, "restore", "admin", device_id="dev-p", params=RESTORE)
    assert [w.task_id for w in tasks.claim_for_device(engine, device, "w", restarted=True)] == [
        poison
    ]
    for _ in range(tasks.MAX_ATTEMPTS - 1):  # the agent dies, restarts, claims it again
        got = tasks.claim_for_device(engine, device, "w", restarted=True)
        assert [w.task_id for w in got] == [poison]
    with write_tx(engine) as c:
        later = tasks.enqueue(c, "sync", "admin", device_id="dev-p")
    got = tasks.claim_for_device(engine, device, "w", restarted=True)
    assert [w.task_id for w in got] == [later]  # the poison task is given up, the next one runs
    admin = Principal("user", "u", "admin", "administrator", frozenset({"read"}))
    t = tasks.get(engine, admin, poison)
    assert t.state == "failed" and "gave up" in t.message


def test_cancel_a_queued_or_waiting_task_but_not_a_running_one(engine: Engine) -> None:
    device = Principal("device", "dev-c", "device c")
    admin = Principal("user", "u", "admin", "administrator", frozenset({"read", "cvd.operate"}))
    with write_tx(engine) as c:
        queued = tasks.enqueue(c, "sync", "admin", device_id="dev-c")
    assert tasks.cancel(engine, admin, queued).state == "cancelled"
    assert tasks.claim_for_device(engine, device, "w") == []  # never handed out
    with write_tx(engine) as c:
        staged = tasks.enqueue(
            c, "revert", "admin", device_id="dev-c", params=RevertParams(snapshot="s1", root=ROOT)
        )
    assert [w.task_id for w in tasks.claim_for_device(engine, device, "w")] == [staged]
    with pytest.raises(ConflictError, match="running"):
        tasks.cancel(engine, admin, staged)
    tasks.report(engine, device, staged, TaskReport(progress=100, state="waiting"))
    assert tasks.cancel(engine, admin, staged).state == "cancelled"
    # The agent's later progress reports do not revive it; the agent sees it cancelled.
    tasks.report(engine, device, staged, TaskReport(progress=100, state="waiting"))
    assert tasks.get_for_device(engine, device, staged).state == "cancelled"
    with pytest.raises(ConflictError, match="cancelled"):
        tasks.cancel(engine, admin, staged)
    other = Principal("device", "dev-x", "another device")
    with pytest.raises(ForbiddenError):
        tasks.get_for_device(engine, other, staged)


def test_a_task_is_queued_only_with_parameters_its_kind_accepts(engine: Engine) -> None:
    """The server validates a task's parameters against its kind's model: nothing is queued
    for an unknown kind, a missing field, a malformed tree id or parameters of another kind."""
    bad: list[tuple[str, object, str]] = [
        ("reboot", {}, "unknown task kind 'reboot'"),
        ("restore", {"snapshot": "s1", "paths": ["etc"]}, "root"),
        ("restore", {"snapshot": "s1", "root": "zz", "paths": ["etc"]}, "root"),
        ("layer-apply", {"delta": ROOT, "remove": ["etc/x"]}, "remove"),
        ("revert", RESTORE, "RestoreParams"),
    ]
    for kind, params, why in bad:
        with pytest.raises(UsageError, match=why), write_tx(engine) as c:
            tasks.enqueue(c, kind, "admin", device_id="dev-v", params=params)  # type: ignore[arg-type]
    device = Principal("device", "dev-v", "device v")
    assert tasks.claim_for_device(engine, device, "w") == []
    with write_tx(engine) as c:
        tid = tasks.enqueue(c, "restore", "admin", device_id="dev-v", params=RESTORE.model_dump())
    (item,) = tasks.claim_for_device(engine, device, "w")
    assert (item.task_id, item.kind) == (tid, "restore")
    assert RestoreParams.model_validate(item.params) == RESTORE  # stored as the model wrote it


def test_a_stored_task_whose_parameters_no_longer_read_is_refused_not_handed_out(
    engine: Engine,
) -> None:
    """A row changed outside Lamina (or by a newer server) never reaches the agent: the claim
    fails it with the reason, keeps its parameters as they were, and hands out the next one."""
    device = Principal("device", "dev-m", "device m")
    admin = Principal("user", "u", "admin", "administrator", frozenset({"read"}))
    broken = {"snapshot": "s1", "root": "not-a-tree-id", "paths": ["etc"]}
    with write_tx(engine) as c:
        bad = tasks.enqueue(c, "restore", "admin", device_id="dev-m", params=RESTORE)
        c.execute(update(tasks_table).where(tasks_table.c.id == bad).values(params=broken))
        good = tasks.enqueue(c, "sync", "admin", device_id="dev-m")
    got = tasks.claim_for_device(engine, device, "w")
    assert [(w.task_id, w.kind) for w in got] == [(good, "sync")]
    with read_tx(engine) as c:
        row = c.execute(select(tasks_table).where(tasks_table.c.id == bad)).one()
    assert row.state == "failed" and row.finished is not None
    assert row.message.startswith("refused: malformed parameters of a restore task: root:")
    assert row.params == broken  # nothing rewritten: the row says what was wrong
    # It is still shown (its parameters as None), with the reason.
    shown = tasks.get(engine, admin, bad)
    assert shown.params is None and shown.state == "failed" and "root" in shown.message
    assert tasks.get(engine, admin, good).params == SyncParams()
    assert tasks.claim_for_device(engine, device, "w") == []
