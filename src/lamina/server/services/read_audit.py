"""Blob reads by users in the audit log: one row per user per window, not per request.

A restore through the server (``cvd restore --output``) reads a snapshot's files in
hundreds of ``/blobs/read`` requests, and a committed audit row for each was most of
the server's CPU for them. Here a user's first read of a window writes its
``blob.read`` row at once, before that answer leaves the server, so the fact that
this user read never depends on anything later; the reads that follow within
``WINDOW`` seconds add their counts (blobs, bytes, requests) to that row in memory,
and the row is brought up to date when the window closes: by a timer, at the user's
next read after it, and when the server stops (``close``). A crash loses at most
the counts of the windows still open, never the row that says who read, and when.
A window whose counts cannot be written (the database refused) stays open, is logged
as an error and is written again ``RETRY`` seconds later or at the user's next read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, update

from lamina.db.engine import write_tx
from lamina.db.models import audit_log
from lamina.errors import BackendError
from lamina.server.security import Principal
from lamina.server.services.common import audit

#: Seconds one audit row covers a user's blob reads.
WINDOW = 60.0
#: Seconds until a window whose counts could not be written is tried again.
RETRY = 10.0
ACTION = "blob.read"

log = logging.getLogger("lamina.audit")


@dataclass
class _Window:
    row: int
    #: ``clock()`` when its row was written
    opened: float
    blobs: int
    size: int
    requests: int = 1
    #: counts added since the row was last written
    dirty: bool = False

    def add(self, blobs: int, size: int) -> None:
        self.blobs += blobs
        self.size += size
        self.requests += 1
        self.dirty = True

    def detail(self) -> dict[str, int]:
        return {"blobs": self.blobs, "size": self.size, "requests": self.requests}


def _start_timer(delay: float, fn: Callable[[], None]) -> None:
    t = threading.Timer(delay, fn)
    t.daemon = True
    t.start()


class ReadAudit:
    """The server process's open read windows, one per user (thread-safe).

    ``schedule(delay, fn)`` runs ``fn`` after ``delay`` seconds (a daemon timer;
    tests pass their own and call it)."""

    def __init__(
        self,
        engine: Engine,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        schedule: Callable[[float, Callable[[], None]], None] = _start_timer,
    ) -> None:
        self.engine, self.window, self.clock, self.schedule = engine, window, clock, schedule
        self._open: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def read(self, actor: Principal, blobs: int, size: int) -> None:
        """Record that ``actor`` read ``blobs`` blobs (``size`` bytes) through
        ``/blobs/read``: a user's first read of a window is written before this returns."""
        if actor.kind != "user":
            return  # devices read their own CVD's blobs (services/access.py)
        now = self.clock()
        with self._lock:
            w = self._open.get(actor.id)
            if w is not None and now - w.opened < self.window:
                w.add(blobs, size)
                return
            if w is not None:
                self._write(w)
            with write_tx(self.engine) as c:
                row = audit(c, actor.name, ACTION, actor.id, blobs=blobs, size=size, requests=1)
            w = self._open[actor.id] = _Window(row, now, blobs, size)
        self.schedule(self.window, lambda: self._close(actor.id, w))

    def _close(self, user: str, w: _Window) -> None:
        with self._lock:
            if self._open.get(user) is not w:
                return  # closed already (the user's next read, or close)
            try:
                self._write(w)
            except BackendError as e:
                log.error("blob-read counts of audit row %s not written (%s): retrying", w.row, e)
                self.schedule(RETRY, lambda: self._close(user, w))
                return
            del self._open[user]

    def close(self) -> None:
        """Write every open window's counts (the server stops)."""
        with self._lock:
            for w in self._open.values():
                try:
                    self._write(w)
                except BackendError as e:
                    log.error("blob-read counts of audit row %s lost at shutdown (%s)", w.row, e)
            self._open.clear()

    def _write(self, w: _Window) -> None:
        if w.dirty:
            with write_tx(self.engine) as c:
                c.execute(
                    update(audit_log).where(audit_log.c.id == w.row).values(detail=w.detail())
                )
            w.dirty = False
