"""Store maintenance run by the server on its own store: check, garbage collection and
statistics, as tasks with live progress.

The console and the API start them (permission ``store.admin``: administrators). The
work is the CLI's: ``store.check.check``, ``store.gc.collect`` and ``Store.stats`` over
``db.roots.all_roots``; the task's result is the report ``lamina store check|gc|stats
--json`` prints (long lists cut at ``MAX_LISTED``, their full length beside them).

- A store task runs in a thread of the server process that started it, which writes its
  progress to the task's row (at most every ``PROGRESS_EVERY`` seconds, and at each new
  step). It ends ``done`` with its report, or ``failed`` with the error's message (a
  check that finds damage fails too, with its report, and records an error event).
- One at a time: starting a store task while another is queued or running is a
  ``ConflictError`` (a check beside a sweep would report blobs the sweep removed), and
  gc also holds the store's own ``gc`` lock across server processes.
- A server that stops during a store task leaves it ``running``; the next start of a
  server on the same host marks it failed (``recover``), so it never blocks the next one.
  A server on another host may never start again: while a store task runs, its server
  writes the row's ``reported`` every ``HEARTBEAT`` seconds, and a running store task
  not reported for ``STALE`` is failed by the next start of one (``queue``), on any
  server (session 27; before, it blocked every store task until the row was edited by
  hand), unless its server certainly still runs (this host's). Servers' clocks must agree
  within minutes (as the store lock's and the claims' expiries already assume). What keeps
  two collections apart is the store's ``gc`` lock, not the row: a server cut off from the
  database cannot renew it either, the next gc takes it over after its expiry, and the
  old one, if it wakes, stops before its next change (``HeldLock.check``). A check, which
  takes no lock, may then run beside a cut-off server's sweep and report as missing
  blobs that sweep removed: run it again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import socket
import threading
import time

from sqlalchemy import Connection, Engine, func, insert, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import snapshots, tasks
from lamina.db.roots import STRAYS, all_roots, forget_stray_flex, owners
from lamina.db.stores import last_gc, record_gc
from lamina.errors import ConflictError, LaminaError
from lamina.processes import describe_holder, identity, is_alive, is_gone
from lamina.protocol.schemas import TaskPublic
from lamina.protocol.tasks import (
    SERVER_KINDS,
    StoreCheckParams,
    StoreGcParams,
    TaskParams,
    TaskState,
    params_for,
)
from lamina.server.security import Principal
from lamina.server.services import agent_events
from lamina.server.services.common import audit, new_id, now
from lamina.server.services.dashboard import StoreUsage, summary
from lamina.server.services.rows import JsonObject
from lamina.server.services.tasks import public
from lamina.store.check import check
from lamina.store.gc import collect
from lamina.store.repository import Store
from lamina.tree.model import references

log = logging.getLogger(__name__)
PERMISSION = "store.admin"
#: Seconds between two progress writes of one step.
PROGRESS_EVERY = 0.5
#: Entries of a report's lists (errors, packs to repack) kept in the task's result.
MAX_LISTED = 200

#: Seconds between two writes of a running store task's ``reported`` by its server.
HEARTBEAT = 60.0
#: A running store task not reported for this long is its dead server's (``queue``).
STALE = dt.timedelta(minutes=10)

#: The threads running store tasks in this process, by task id (``wait`` joins one).
_running: dict[str, threading.Thread] = {}


def _worker() -> str:
    """Who runs a store task: this process, as no later one can be (``processes.identity``:
    ``recover`` tells a dead one even when a restart or a reboot gave its pid to another)."""
    return f"server@{identity()}"


def start(
    engine: Engine, store: Store, actor: Principal, kind: str, params: TaskParams
) -> TaskPublic:
    """Queue a store task of ``kind`` and run it in a thread of this process."""
    t = queue(engine, actor, kind, params)
    thread = threading.Thread(
        target=_thread, args=(engine, store, t.id), name=f"lamina-{kind}", daemon=True
    )
    _running[t.id] = thread
    thread.start()
    return t


def queue(engine: Engine, actor: Principal, kind: str, params: TaskParams) -> TaskPublic:
    """The task row, ``running`` and claimed by this host, audited in the same transaction;
    ``run`` does the work."""
    actor.require(PERMISSION)
    if kind not in SERVER_KINDS:
        raise LaminaError(f"{kind} is not a store task")
    checked = params_for(kind, params)
    with write_tx(engine) as c:  # (its own: kept when the start below is refused)
        _fail_abandoned(c)
    with write_tx(engine) as c:
        busy = c.execute(
            select(tasks.c.id, tasks.c.kind).where(
                tasks.c.kind.in_(SERVER_KINDS),
                tasks.c.state.in_((TaskState.QUEUED, TaskState.RUNNING)),
            )
        ).first()
        if busy is not None:
            raise ConflictError(
                f"task {busy.id} ({busy.kind}) is still running on the store: "
                "wait for it to finish (its page shows its progress)"
            )
        tid = new_id()
        at = now()
        c.execute(
            insert(tasks).values(
                id=tid,
                kind=kind,
                state=TaskState.RUNNING,
                progress=0,
                message="starting",
                params=checked.model_dump(mode="json"),
                result={},
                created_by=actor.name,
                created=at,
                started=at,
                reported=at,
                claimed_by=_worker(),
                attempts=1,
            )
        )
        audit(c, actor.name, kind.replace("-", ".", 1), tid, **checked.model_dump(mode="json"))
        return public(c.execute(select(tasks).where(tasks.c.id == tid)).one())


def _fail_abandoned(c: Connection) -> None:
    """Fail the running store tasks whose server has not reported for ``STALE`` (their
    server, on another host, stopped or lost the database), with an event each. A task
    whose server certainly still runs (this host's: ``processes.is_alive``) is left: it
    is slow or stuck, not gone, and its row keeps the next task from starting beside it."""
    at = now()
    last = func.coalesce(tasks.c.reported, tasks.c.started, tasks.c.created)
    rows = c.execute(
        select(tasks.c.id, tasks.c.kind, tasks.c.claimed_by).where(
            tasks.c.kind.in_(SERVER_KINDS),
            tasks.c.state == TaskState.RUNNING,
            last < at - STALE,
        )
    ).all()
    for r in rows:
        if r.claimed_by and is_alive(r.claimed_by.removeprefix("server@")):
            continue
        who = describe_holder(r.claimed_by or "its server")
        message = (
            f"{who} has not reported this task for over {STALE.total_seconds() / 60:.0f} "
            "minutes (stopped, or cut off from the database): failed, so that store tasks "
            "can start again; start it again"
        )
        done = c.execute(  # (stale still: a report committed since the read keeps it)
            update(tasks)
            .where(tasks.c.id == r.id, tasks.c.state == TaskState.RUNNING, last < at - STALE)
            .values(state=TaskState.FAILED, finished=at, message=message)
        ).rowcount
        if done:
            agent_events.task_failed(c, r.kind, "store", message)


def _beat(engine: Engine, task_id: str, stop: threading.Event, every: float = HEARTBEAT) -> None:
    """Write the running store task's ``reported`` every ``every`` seconds until ``stop``."""
    while not stop.wait(every):
        try:
            with write_tx(engine) as c:
                c.execute(
                    update(tasks)
                    .where(tasks.c.id == task_id, tasks.c.state == TaskState.RUNNING)
                    .values(reported=now())
                )
        except Exception as e:  # (a database hiccup: the next beat tries again)
            log.warning("store task %s: could not report it running: %s", task_id, e)


def wait(task_id: str | None = None, timeout: float | None = None) -> None:
    """Until this process's thread of ``task_id`` (None: of every store task) has ended."""
    for tid, thread in list(_running.items()):
        if task_id in (None, tid):
            thread.join(timeout)


class _Progress:
    """The ``ProgressFn`` of a store task: its step and share written to the task's row."""

    def __init__(self, engine: Engine, task_id: str) -> None:
        self.engine, self.task_id = engine, task_id
        self.step, self.last = "", 0.0

    def __call__(self, step: str, done: int, total: int) -> None:
        at = time.monotonic()
        if step == self.step and at - self.last < PROGRESS_EVERY:
            return
        self.step, self.last = step, at
        share = min(99, done * 100 // total) if total else 0
        message = f"{step} {done} of {total}" if total else step
        with write_tx(self.engine) as c:
            c.execute(
                update(tasks)
                .where(tasks.c.id == self.task_id, tasks.c.state == TaskState.RUNNING)
                .values(progress=share, message=message[:2000], reported=now())
            )


def run(engine: Engine, store: Store, task_id: str) -> TaskPublic:
    """Do the store task ``task_id`` (queued by ``queue``) and record how it ended."""
    try:
        with read_tx(engine) as c:
            row = c.execute(select(tasks).where(tasks.c.id == task_id)).one()
        params = params_for(row.kind, row.params)
        progress = _Progress(engine, task_id)
        if isinstance(params, StoreCheckParams):
            ok, message, result = _check(store, params, progress)
        elif isinstance(params, StoreGcParams):
            ok, message, result = _gc(store, params, progress)
        else:
            ok, message, result = _stats(engine, store)
    except Exception as e:  # any failure ends the task, said on its page
        ok, result = False, {}
        message = e.message if isinstance(e, LaminaError) else f"{type(e).__name__}: {e}"
    return _finish(engine, task_id, ok, message, result)


def _thread(engine: Engine, store: Store, task_id: str) -> None:
    stop = threading.Event()
    beat = threading.Thread(
        target=_beat, args=(engine, task_id, stop, HEARTBEAT), name="lamina-store-beat", daemon=True
    )
    beat.start()
    try:
        run(engine, store, task_id)
    except Exception:  # the database itself failed: nothing to write it to but the log
        log.exception("store task %s could not record how it ended", task_id)
    finally:
        stop.set()
        _running.pop(task_id, None)


def _finish(engine: Engine, task_id: str, ok: bool, message: str, result: JsonObject) -> TaskPublic:
    """Record how the task ended; a task another server failed as abandoned meanwhile
    (``_fail_abandoned``) stays as it was, its outcome logged."""
    with write_tx(engine) as c:
        r = c.execute(select(tasks).where(tasks.c.id == task_id)).one()
        ended = c.execute(
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.state == TaskState.RUNNING)
            .values(
                state=TaskState.DONE if ok else TaskState.FAILED,
                progress=100 if ok else r.progress,
                message=message[:2000],
                result=result,
                finished=now(),
            )
        ).rowcount
        if not ended:
            log.warning(
                "store task %s ended (%s: %s) after it was %s", task_id, ok, message, r.state
            )
        elif not ok:
            agent_events.task_failed(c, r.kind, "store", message)
        return public(c.execute(select(tasks).where(tasks.c.id == task_id)).one())


def _cut(doc: JsonObject, *keys: str) -> JsonObject:
    """``doc`` with each list under ``keys`` cut at ``MAX_LISTED`` (``<key>_total`` its length)."""
    for k in keys:
        items = doc.get(k) or []
        doc[f"{k}_total"] = len(items)
        doc[k] = items[:MAX_LISTED]
    return doc


def _check(
    store: Store, params: StoreCheckParams, progress: _Progress
) -> tuple[bool, str, JsonObject]:
    rep = check(store, all_roots(store), references, read_data=params.read_data, progress=progress)
    result = _cut({"ok": rep.ok, **dataclasses.asdict(rep)}, "errors", "warnings")
    said = f"{rep.packs} packs, {rep.blobs} blobs, {rep.trees} trees, {rep.roots} roots checked"
    if rep.ok:
        return True, f"{said}: no errors", result
    return False, f"{said}: {len(rep.errors)} errors (the store is damaged)", result


def _gc(store: Store, params: StoreGcParams, progress: _Progress) -> tuple[bool, str, JsonObject]:
    started = time.monotonic()
    strays = forget_stray_flex(store, params.dry_run)
    rep = collect(
        store,
        all_roots(store),
        references,
        orphan_grace=dt.timedelta(seconds=params.orphan_grace),
        dry_run=params.dry_run,
        progress=progress,
        owners=owners(store),
    )
    if strays:
        rep.notes.append(f"{'would forget' if params.dry_run else 'forgot'} {strays} {STRAYS}")
    if not params.dry_run:
        record_gc(store, time.monotonic() - started, rep.bytes_freed)
    result = _cut(dataclasses.asdict(rep), "repack", "notes")
    verb = "would free" if params.dry_run else "freed"
    return (
        True,
        (
            f"{rep.reachable} blobs reachable; {rep.condemned} unreachable; "
            f"{rep.packs_deleted} packs to delete, {rep.packs_repacked} to repack, "
            f"{rep.orphans_deleted} orphan packs; {verb} {rep.bytes_freed} bytes; "
            f"{rep.owner_rows} ownership records to take back"
            if params.dry_run
            else f"{rep.reachable} blobs reachable; removed {rep.condemned} blobs; "
            f"{rep.packs_deleted} packs deleted, {rep.packs_repacked} repacked, "
            f"{rep.orphans_deleted} orphan packs deleted; {verb} {rep.bytes_freed} bytes; "
            f"{rep.owner_rows} ownership records taken back"
        ),
        result,
    )


def _stats(engine: Engine, store: Store) -> tuple[bool, str, JsonObject]:
    st = store.stats()
    with read_tx(engine) as c:
        logical = int(c.execute(select(func.coalesce(func.sum(snapshots.c.bytes), 0))).scalar_one())
    result = {
        **dataclasses.asdict(st),
        "logical_bytes": logical,
        # Bytes the snapshots describe per distinct byte kept, then per byte stored.
        "dedup_ratio": round(logical / st.raw_bytes, 3) if st.raw_bytes else 0.0,
        "compression_ratio": round(st.raw_bytes / st.stored_bytes, 3) if st.stored_bytes else 0.0,
    }
    return True, f"{st.packs} packs, {st.blobs} blobs, {st.snapshots} snapshots counted", result


def recover(engine: Engine) -> int:
    """Fail the store tasks that a server process of this host, now gone, left ``running``."""
    here = f"server@{socket.gethostname()}:"
    with write_tx(engine) as c:
        rows = c.execute(
            select(tasks.c.id, tasks.c.claimed_by).where(
                tasks.c.kind.in_(SERVER_KINDS),
                tasks.c.state == TaskState.RUNNING,
                tasks.c.claimed_by.startswith(here, autoescape=True),
            )
        ).all()
        gone = [r.id for r in rows if is_gone(r.claimed_by.removeprefix("server@"))]
        if gone:
            c.execute(
                update(tasks)
                .where(tasks.c.id.in_(gone), tasks.c.state == TaskState.RUNNING)
                .values(
                    state=TaskState.FAILED,
                    finished=now(),
                    message="the server stopped during this task: start it again",
                )
            )
    return len(gone)


@dataclasses.dataclass
class Overview:
    """What the console's Store page shows before any task: usage, the last gc, recent tasks."""

    usage: StoreUsage | None
    last_gc: dict[str, object] | None
    recent: list[TaskPublic]


def overview(engine: Engine, actor: Principal, limit: int = 20) -> Overview:
    actor.require("read")
    with read_tx(engine) as c:
        rows = c.execute(
            select(tasks)
            .where(tasks.c.kind.in_(SERVER_KINDS))
            .order_by(tasks.c.created.desc())
            .limit(limit)
        ).all()
    return Overview(
        usage=summary(engine, actor).usage,
        last_gc=last_gc(engine),
        recent=[public(r) for r in rows],
    )
