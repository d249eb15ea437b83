"""Tasks: long operations with state and progress, claimed atomically by one worker.

States: queued → running → done | failed (| waiting: an agent staged work for the
next boot). A claim is ``UPDATE … WHERE state = 'queued'``: exactly one claimer
wins, on SQLite and on PostgreSQL with several server processes.

Each claim counts an attempt. A task still ``running`` when its agent restarts
was cut short: it is queued again, unless it already had ``MAX_ATTEMPTS``, then
it fails (a task that kills its agent must not do so at every start).

An admin cancels a task while it is ``queued`` or ``waiting`` (staged, not yet
applied): it becomes ``cancelled``; the agent drops a cancelled staged
transaction at its next poll. Reports on a cancelled task are ignored, except
"done" from an agent whose boot applied the task before it learned.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, Row, Select, and_, insert, or_, select, update

from lamina.db.engine import read_once, read_tx, write_tx
from lamina.db.models import devices, tasks
from lamina.errors import ConflictError, ForbiddenError, NotFoundError, UsageError
from lamina.protocol.schemas import TaskPublic, TaskReport, WorkItem
from lamina.protocol.tasks import TaskParams, TaskState, params_for
from lamina.server.security import Principal
from lamina.server.services import agent_events, fleet, users
from lamina.server.services.common import audit, find_by_id, from_row, new_id, now
from lamina.server.services.credentials import Presented
from lamina.server.services.progress import ProgressReports
from lamina.server.services.rows import JsonObject, Task

QUEUED, RUNNING, WAITING, DONE, FAILED = (
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.WAITING,
    TaskState.DONE,
    TaskState.FAILED,
)
CANCELLED = TaskState.CANCELLED
#: Claims of one task before an agent restart during it makes it fail instead.
MAX_ATTEMPTS = 3


def public(r: Task) -> TaskPublic:
    """A task row as the API shows it, its parameters read into its kind's model; None for
    a row whose stored parameters no longer read (the claim refuses it, saying why)."""
    try:
        return from_row(TaskPublic, r)
    except UsageError:
        return from_row(TaskPublic, r, params=None)


def enqueue(
    c: Connection,
    kind: str,
    actor: str,
    *,
    cvd_id: str | None = None,
    device_id: str | None = None,
    params: TaskParams | Mapping[str, object] | None = None,
) -> str:
    """Queue a task inside the caller's transaction.

    ``params`` are validated against the kind's model (``lamina.protocol.tasks``):
    an unknown kind or a malformed parameter is a ``UsageError`` and queues nothing.
    """
    checked = params_for(kind, params)
    tid = new_id()
    c.execute(
        insert(tasks).values(
            id=tid,
            kind=kind,
            state=QUEUED,
            progress=0,
            message="",
            cvd_id=cvd_id,
            device_id=device_id,
            params=checked.model_dump(mode="json"),
            result={},
            created_by=actor,
            created=now(),
        )
    )
    return tid


def get(engine: Engine, actor: Principal, task_id: str) -> TaskPublic:
    actor.require("read")
    with read_tx(engine) as c:
        r = find_by_id(c, tasks, task_id, "task")  # an id or a unique prefix of one
    return public(r)


def list_tasks(
    engine: Engine,
    actor: Principal,
    state: str | None = None,
    cvd_id: str | None = None,
    limit: int = 200,
) -> list[TaskPublic]:
    actor.require("read")
    q = select(tasks).order_by(tasks.c.created.desc()).limit(limit)
    if state:
        q = q.where(tasks.c.state == state)
    if cvd_id:
        q = q.where(tasks.c.cvd_id == cvd_id)
    with read_tx(engine) as c:
        return [public(r) for r in c.execute(q)]


def claim_for_device(
    engine: Engine, device: Principal | Presented, worker: str, restarted: bool = False
) -> list[WorkItem]:
    """Claim every queued task addressed to this device (each claim atomic).

    ``restarted``: the agent process just started, so a task of this device still
    ``running`` was cut short by its restart: it is queued again first. A credential
    ``Presented`` is checked against the device row the first query reads with the
    device's open tasks (``users.device_principal``): an idle poll is one round trip; a
    device so found that is not active gets none (tasks are addressed to active CVDs).
    """
    if isinstance(device, Principal):
        with read_once(engine) as c:
            found = c.execute(_open_tasks(device.id)).all()
    else:
        device, found = _device_and_open_tasks(engine, device)
        if device.role != fleet.ACTIVE:
            return []  # (a caller that knows the device answers a pending one itself)
    cut = (tasks.c.device_id == device.id, tasks.c.state == RUNNING)
    if restarted and any(t.task_state == RUNNING for t in found):
        # a write transaction only when there is a task to requeue
        with write_tx(engine) as c:
            c.execute(
                update(tasks)
                .where(*cut, tasks.c.attempts >= MAX_ATTEMPTS)
                .values(
                    state=FAILED,
                    claimed_by=None,
                    finished=now(),
                    message=f"gave up: the agent stopped during this task {MAX_ATTEMPTS} times",
                )
            )
            c.execute(
                update(tasks)
                .where(*cut)
                .values(state=QUEUED, claimed_by=None, message="queued again: the agent restarted")
            )
            found = c.execute(_open_tasks(device.id)).all()
    ids = [t.task_id for t in found if t.task_state == QUEUED]
    out: list[WorkItem] = []
    for tid in ids:
        with write_tx(engine) as c:
            won = c.execute(
                update(tasks)
                .where(tasks.c.id == tid, tasks.c.state == QUEUED)
                .values(
                    state=RUNNING,
                    claimed_by=worker,
                    started=now(),
                    attempts=tasks.c.attempts + 1,
                )
            ).rowcount
            if not won:
                continue
            r = c.execute(select(tasks).where(tasks.c.id == tid)).one()
            try:
                out.append(WorkItem(task_id=r.id, kind=r.kind, params=r.params))
            except UsageError as e:  # never handed out: failed, its row kept as it is
                why = f"refused: {e.message}"
                c.execute(
                    update(tasks)
                    .where(tasks.c.id == tid)
                    .values(state=FAILED, claimed_by=None, finished=now(), message=why)
                )
                agent_events.task_failed(c, r.kind, r.cvd_id or device.name, why)
    return out


#: A device's open tasks (queued or running), oldest first.
_OPEN = (tasks.c.state.in_((QUEUED, RUNNING)),)


def _open_tasks(device_id: str) -> Select[Any]:
    """The device's queued and running tasks: one statement answers an idle poll."""
    return (
        select(tasks.c.id.label("task_id"), tasks.c.state.label("task_state"))
        .where(tasks.c.device_id == device_id, *_OPEN)
        .order_by(tasks.c.created)
    )


def _device_and_open_tasks(engine: Engine, who: Presented) -> tuple[Principal, list[Row[Any]]]:
    """The device a credential belongs to (or AuthError) and its open tasks, in one
    query: its row joined to its open tasks (one row, without a task, if it has none)."""
    generation = who.generation()
    query: Select[Any] = (
        select(
            devices.c.id,
            devices.c.hostname,
            devices.c.status,
            tasks.c.id.label("task_id"),
            tasks.c.state.label("task_state"),
        )
        .select_from(devices.outerjoin(tasks, and_(tasks.c.device_id == devices.c.id, *_OPEN)))
        .where(devices.c.credential_hash == who.token_hash)
        .order_by(tasks.c.created)
    )
    with read_once(engine) as c:
        rows = c.execute(query).all()
    device = users.device_principal(rows[0] if rows else None, who, generation)
    return device, [r for r in rows if r.task_id is not None]


def report(
    engine: Engine,
    device: Principal,
    task_id: str,
    rep: TaskReport,
    later: ProgressReports | None = None,
) -> TaskPublic:
    """An agent's report on its task. One that keeps a running task running (its progress,
    message and result so far) is answered from a read transaction and, with ``later``,
    kept there and written with the others a moment later (``store_progress``); a change
    of state (done, failed, waiting, running again) is written before its answer."""
    if later is not None and rep.state in (None, RUNNING):
        with read_tx(engine) as c:
            r = _device_task(c, device, task_id)
        if r.state == RUNNING:
            kept = _progress_values(rep)
            later.put(task_id, kept)
            return public(r).model_copy(update=kept)
    if later is not None:
        later.drop(task_id)  # a change of state: a progress report kept before it is older
    with write_tx(engine) as c:
        r = _device_task(c, device, task_id)
        if r.state == CANCELLED:
            if rep.state != DONE:
                return public(r)
            rep = rep.model_copy(
                update={"message": f"{rep.message} (cancelled too late: a boot applied it)"}
            )
        if r.state in (DONE, FAILED):
            # An ended task stays ended: reopened, it would deliver its tree again
            # (``access.check_read``) and keep its delta from the gc. A report on it (a
            # retried one, or an agent still at a task the server gave up on) is answered
            # with the task as it is, and changes nothing: an error here would stop the
            # agent's cycle before it reads its next work.
            return public(r)
        values = _progress_values(rep)
        values["reported"] = now()
        if rep.state:
            values["state"] = rep.state
            if rep.state in (DONE, FAILED):
                values["finished"] = now()
        if rep.state == FAILED and r.state != FAILED:
            agent_events.task_failed(c, r.kind, r.cvd_id or device.name, rep.message)
        c.execute(update(tasks).where(tasks.c.id == task_id).values(**values))
        return public(c.execute(select(tasks).where(tasks.c.id == task_id)).one())


def _progress_values(rep: TaskReport) -> JsonObject:
    """The columns a report writes besides the state (a result only when it brings one)."""
    values: JsonObject = {"progress": rep.progress, "message": rep.message}
    if rep.result:
        values["result"] = rep.result
    return values


def store_progress(
    c: Connection, task_id: str, values: JsonObject, at: dt.datetime, newer_only: bool = False
) -> bool:
    """Write a running task's progress kept a moment (``ProgressReports``, flushed): only
    while the task is still running, and (``newer_only``) in the claim it was reported in
    (claimed no later than ``at``) and over no report made after ``at`` (``reported``: with
    two servers, each flushing its own, the older of two reports may land last).
    True if written."""
    q = update(tasks).where(tasks.c.id == task_id, tasks.c.state == RUNNING)
    if newer_only:
        q = q.where(tasks.c.started <= at, or_(tasks.c.reported.is_(None), tasks.c.reported <= at))
    return bool(c.execute(q.values(**values, reported=at)).rowcount)


def get_for_device(engine: Engine, device: Principal, task_id: str) -> TaskPublic:
    """One of this device's own tasks (the agent checks a staged one was not cancelled)."""
    with read_tx(engine) as c:
        return public(_device_task(c, device, task_id))


def _device_task(c: Connection, device: Principal, task_id: str) -> Task:
    """A task of ``device``'s own: another device's is forbidden."""
    r = c.execute(select(tasks).where(tasks.c.id == task_id)).first()
    if r is None:
        raise NotFoundError(f"no task {task_id!r}")
    if r.device_id != device.id:
        raise ForbiddenError("this task belongs to another device")
    return r


def cancel(engine: Engine, actor: Principal, task_id: str) -> TaskPublic:
    """Cancel a task not started yet (``queued``) or staged but not applied (``waiting``)."""
    actor.require("cvd.operate")
    with write_tx(engine) as c:
        r = find_by_id(c, tasks, task_id, "task")  # an id or a unique prefix of one
        task_id = r.id
        won = c.execute(
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.state.in_((QUEUED, WAITING)))
            .values(
                state=CANCELLED,
                finished=now(),
                message=f"cancelled by {actor.name}"
                + (
                    ": the agent drops what it staged at its next poll"
                    if r.state == WAITING
                    else ""
                ),
            )
        ).rowcount
        if not won:
            raise ConflictError(
                f"task {task_id} is {r.state}: only a queued or waiting (staged) task can be cancelled"
            )
        audit(c, actor.name, "task.cancel", task_id, kind=r.kind, was=r.state)
        return public(c.execute(select(tasks).where(tasks.c.id == task_id)).one())
