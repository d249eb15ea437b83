"""A call made at most once every so many seconds, none lost, never on the caller's
thread: the sync's progress reports (a status write and a request each), which the
scan's and the uploads' threads must not wait for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Pending(Protocol):
    def cancel(self) -> None: ...


class Running(Protocol):
    def join(self) -> None: ...


def _timer(wait: float, fn: Callable[[], None]) -> Pending:
    t = threading.Timer(wait, fn)
    t.daemon = True
    t.start()
    return t


def _thread(fn: Callable[[], None]) -> Running:
    t = threading.Thread(target=fn, name="lamina-report", daemon=True)
    t.start()
    return t


class Throttled:
    """``send`` at most once every ``every`` seconds, on a thread of its own (``now``):
    the caller goes on at once. A call the limit holds back is made once it allows, on
    a timer (``send`` reads the state then: the latest): the last progress of a sync
    that then stalls (its upload held by a slow or failing server, its scan waiting for
    the upload) is still shown, not only the report before it. One call runs at a time:
    calls the limit allows while one runs are made once more by its thread when it ends,
    not on a thread each (a server that answers slowly piles up no threads). ``settle``
    cancels a call held back and waits for the one being made. With ``quiet_start`` the
    period starts at construction (the caller has just shown its state): a task shorter
    than one period makes no call, a longer one its first a period in."""

    def __init__(
        self,
        send: Callable[[], None],
        every: float,
        clock: Callable[[], float] = time.monotonic,
        later: Callable[[float, Callable[[], None]], Pending] = _timer,
        now: Callable[[Callable[[], None]], Running] = _thread,
        quiet_start: bool = False,
    ) -> None:
        self._send, self._every, self._clock, self._later = send, every, clock, later
        self._now = now
        self._last = clock() if quiet_start else -every
        self._pending: Pending | None = None
        #: the thread making the calls the limit allowed (None: none started yet)
        self._running: Running | None = None
        #: a thread is making calls, and whether it must make one more when it ends
        self._busy = self._again = False
        #: reentrant: a starter that makes the call at once (the tests') runs it inside
        self._lock = threading.RLock()
        #: held while ``send`` runs: one at a time, and ``settle`` waits for it
        self._sending = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            wait = self._last + self._every - self._clock()
            if wait > 0:
                if self._pending is None:
                    self._pending = self._later(wait, self._held_back)
                return
            self._last = self._clock()
            if self._busy:
                self._again = True
                return
            self._busy = True
            self._running = self._now(self._allowed)

    def _allowed(self) -> None:
        try:
            while True:
                with self._sending:
                    self._send()
                with self._lock:
                    if not self._again:
                        self._busy = False
                        return
                    self._again = False
                    self._last = self._clock()
        except BaseException:
            with self._lock:
                self._busy = self._again = False
            raise

    def _held_back(self) -> None:
        with self._sending:
            with self._lock:
                if self._pending is None:  # settled meanwhile
                    return
                self._pending = None
                self._last = self._clock()
            self._send()

    def settle(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
            running = self._running
        if pending is not None:
            pending.cancel()
        if running is not None:
            running.join()
        with self._sending:
            pass
