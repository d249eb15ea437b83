"""Agents' progress reports, written once a second for all of them, not once per report.

A syncing agent posts its progress to ``/agent/config`` about once a second. Written in
its own transaction, each such report queued for the database's writer behind bundles
and commits (SQLite has one writer), and the agent's poll waited with it: that wait was
most of a slow poll under load (docs/design.md, "Polls under load (session 11)").

A report that keeps the agent's state and brings no event (``agent_events.same_state``,
no new facts, no new hostname) is therefore answered at once from a read transaction
and kept here, the last one per device; ``FLUSH_EVERY`` seconds after the first one
waiting, all that wait are written in one write transaction (``fleet.store_report``,
the same function that stores a report at once). A report that changes the state, an
error, facts or a hostname is still written before its answer, and a waiting report
older than one written since is dropped, never written over it (``store_report``'s
``newer_only``). Each server process keeps its own; ``close`` writes what waits when
the server stops. A crash loses at most the last ``FLUSH_EVERY`` seconds of progress,
which the agent's next report brings again; nothing else (no check, no decision of
the server) reads progress.

A running task's progress reports (``POST /agent/tasks/{id}`` that keep it running) are
kept alike in a second instance, keyed by the task (``tasks.store_progress``): the task's
changes of state (done, failed, waiting) are written before their answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from sqlalchemy import Connection, Engine

from lamina.db.engine import write_tx
from lamina.errors import BackendError
from lamina.server.services.common import now
from lamina.server.services.rows import JsonObject

#: Seconds a progress report may wait before it is written.
FLUSH_EVERY = 1.0

log = logging.getLogger("lamina.server")

#: Stores one device's report received ``at``, unless (the last argument true) one
#: received after it is stored; True if stored (``fleet.store_report``).
Store = Callable[[Connection, str, JsonObject, dt.datetime, bool], bool]


def _start_timer(delay: float, fn: Callable[[], None]) -> None:
    t = threading.Timer(delay, fn)
    t.daemon = True
    t.start()


class ProgressReports:
    """The progress reports of this server process not yet written (thread-safe).

    ``store(conn, device_id, report, at, True)`` writes one inside the flush's transaction;
    ``schedule(delay, fn)`` runs ``fn`` after ``delay`` seconds (a daemon timer; tests
    pass their own and call ``flush``)."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        every: float = FLUSH_EVERY,
        schedule: Callable[[float, Callable[[], None]], None] = _start_timer,
    ) -> None:
        self.engine, self.store, self.every, self.schedule = engine, store, every, schedule
        self._waiting: dict[str, tuple[JsonObject, dt.datetime]] = {}
        self._lock = threading.Lock()  # held only to touch _waiting: a poll never waits on a write
        self._flushing = threading.Lock()  # one flush at a time (the timer, close)
        self._due = False

    def put(self, device_id: str, report: JsonObject) -> None:
        """Keep ``report`` (received now) as the device's last; written within ``every`` s."""
        with self._lock:
            self._waiting[device_id] = (report, now())
            if self._due:
                return
            self._due = True
        self._schedule()

    def _schedule(self) -> None:
        try:
            self.schedule(self.every, self._tick)
        except BaseException:
            with self._lock:  # no timer (no thread to be had): the next report tries again
                self._due = False
            raise

    def drop(self, key: str) -> None:
        """Forget ``key``'s waiting report: a report stored at once since is newer."""
        with self._lock:
            self._waiting.pop(key, None)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def flush(self) -> int:
        """Write every waiting report in one transaction; how many were stored. On a
        database error they wait again (unless a newer one came) and the error is raised."""
        with self._flushing:
            with self._lock:
                batch, self._waiting = self._waiting, {}
                self._due = False
            if not batch:
                return 0
            # in the devices' order: two servers' flushes lock rows in one order
            items = sorted(batch.items())
            try:
                with write_tx(self.engine) as c:
                    return sum(self.store(c, dev, rep, at, True) for dev, (rep, at) in items)
            except BackendError:
                self._again(items)
                raise
            except Exception:
                log.exception("agents' progress refused together: each alone now")
            return self._one_by_one(items)

    def _again(self, items: list[tuple[str, tuple[JsonObject, dt.datetime]]]) -> None:
        """Reports that could not be written wait again, unless a newer one came."""
        with self._lock:
            for dev, item in items:
                self._waiting.setdefault(dev, item)

    def _one_by_one(self, items: list[tuple[str, tuple[JsonObject, dt.datetime]]]) -> int:
        """Each report in a transaction of its own: one the database refuses is logged and
        dropped (a later report replaces it), the others are stored."""
        stored = 0
        for i, (dev, (rep, at)) in enumerate(items):
            try:
                with write_tx(self.engine) as c:
                    stored += self.store(c, dev, rep, at, True)
            except BackendError:
                self._again(items[i:])
                raise
            except Exception:
                log.exception("device %s's progress report refused: dropped", dev)
        return stored

    def _tick(self) -> None:
        try:
            self.flush()
        except BackendError as e:
            log.error("agents' progress not written (%s): trying again", e)
        with self._lock:
            if not self._waiting or self._due:
                return
            self._due = True
        self._schedule()

    def close(self) -> None:
        """Write what waits (the server stops)."""
        try:
            self.flush()
        except BackendError as e:
            log.error("agents' last progress reports lost at shutdown (%s)", e)
