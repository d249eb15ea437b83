"""A store lock held for a long piece of work (a collection, a roll of small packs),
renewed while it is held.

The lock names its holder's process (``processes.lock_holder``) and has an expiry.
While the work goes on, a thread renews it every ``ttl / 4``; so a slow holder (a mark
of a large store, a read stalled on S3) keeps it, and the expiry only frees the lock of
a holder that stopped altogether: killed (taken over at once, ``holder_gone``), or on
another machine and frozen. Such a holder may wake up: before each step that changes
the store it asks ``check``, which stops it (``StoreBusyError``) once the lock was
taken over, so two holders never change the store at once (the crash audit's S1: a
roll stalled past its expiry dropped rows a collection had condemned meanwhile).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from types import TracebackType

from lamina.errors import StoreBusyError
from lamina.processes import describe_holder, lock_holder, released
from lamina.store.catalog import Catalog

log = logging.getLogger(__name__)


class HeldLock:
    """``with HeldLock(catalog, name, ttl) as lock:``: taken or ``StoreBusyError``
    (``busy`` its message); renewed in the background; ``lock.check()`` before each
    change to the store."""

    def __init__(self, catalog: Catalog, name: str, ttl: dt.timedelta, busy: str) -> None:
        self.catalog, self.name, self.ttl, self.busy = catalog, name, ttl, busy
        self.holder = lock_holder()
        self.lost = False
        self._renewed = 0.0  # (monotonic time of the last renewal)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> bool:
        """Take the lock and start renewing it; False when another holder has it."""
        if self._thread is not None:
            return True
        if not self.catalog.try_lock(self.name, self.holder, self.ttl):
            return False
        self._renewed = time.monotonic()
        self._thread = threading.Thread(
            target=self._keep, name=f"lamina-lock-{self.name}", daemon=True
        )
        self._thread.start()
        return True

    def __enter__(self) -> HeldLock:
        if not self.take():
            raise StoreBusyError(self.refused())
        return self

    def refused(self) -> str:
        """``busy``, with who holds the lock and until when: a holder that hangs keeps
        renewing it (a slow one must), and only a person can tell the two apart."""
        try:
            info = self.catalog.lock_info(self.name)
        except Exception:  # (the message without it)
            info = None
        if info is None:
            return self.busy
        holder, expires = info
        when = f"{expires:%Y-%m-%d %H:%M:%S %Z}"
        until = (
            f"now until {when}"
            if expires > dt.datetime.now(dt.UTC)
            else f"expired at {when}, but its process still runs"
        )
        return (
            f"{self.busy}: {describe_holder(holder)} holds the store's {self.name} lock "
            f"(renewed while it works; {until}). If it hangs, stop it: its lock is free "
            "once it has ended (seen from another machine, once its expiry has passed)"
        )

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)  # (a renewal stuck on a dead database: left)
        released(self.holder)  # (a leftover row of ours is taken over from now on)
        if not self.lost:
            try:
                self.catalog.unlock(self.name, self.holder)
            except Exception as e:  # (its row stays: the next holder takes it over)
                log.warning("could not unlock the store's %s lock: %s", self.name, e)

    def renew(self) -> bool:
        """Extend the lock now; False (and ``lost``) once it is another holder's."""
        if not self.lost and not self.catalog.renew_lock(self.name, self.holder, self.ttl):
            self.lost = True
        if not self.lost:
            self._renewed = time.monotonic()
        return not self.lost

    def check(self) -> None:
        """Stop unless the lock is still this holder's. Renewed within the last eighth of
        its expiry, it is (only its expiry lets another take a live holder's lock), and
        the catalog is not asked: one write transaction per swept pack is spared."""
        if not self.lost and time.monotonic() - self._renewed < self.ttl.total_seconds() / 8:
            return
        if not self.renew():
            raise StoreBusyError(
                f"the store's {self.name} lock was taken over while this process held it "
                "(it stalled past the lock's expiry): stopped before changing anything more"
            )

    def _keep(self) -> None:
        every = max(self.ttl.total_seconds() / 4, 0.05)
        while not self._stop.wait(every):
            try:
                if not self.renew():
                    return
            except Exception as e:  # (a database hiccup: the next renewal tries again)
                log.warning("could not renew the store's %s lock: %s", self.name, e)
