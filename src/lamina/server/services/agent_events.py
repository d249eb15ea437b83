"""Events from what agents report: failures an administrator should see.

Each agent report (``POST /agent/config``) is compared with the one before it, in the
same transaction that stores it, and a change for the worse becomes one event:

- ``error``, "agent error: ..." when the agent enters its error state or reports a
  different error (a failed sync; the same error again adds nothing);
- ``warning``, "disk low: ..." when free space falls below ``LOW_DISK``;
- ``warning``, "clock skew: ..." when the agent's clock is more than ``MAX_SKEW`` away
  from the server's (snapshot times and retention depend on it);
- a task the agent reports failed (a restore, or a revert or layer update whose
  apply at boot failed): ``error``, "task KIND failed: ..." (``task_failed``).

The report also refreshes the device's hostname (a changed ``/etc/hostname`` shows in
``lamina device list`` at the next cycle).

An agent polls all day. A report that would record no event and changes nothing but
the volatile fields (``VOLATILE``: its clock and free space) is stored only when the
stored one is ``STORE_EVERY`` old (``worth_storing``): hundreds of agents polling at
once otherwise make every poll wait for the database's write lock. A sync's progress is
not volatile: every report of it is stored, since the report before a stall (an upload
held up) must be what the console shows; one that keeps the agent's state and brings no
event (``same_state``) is stored within a second, with the other agents' in one
transaction (``services/progress.py``), not before its answer.
"""

from __future__ import annotations

import datetime as dt
from typing import TypeGuard

from sqlalchemy import Connection

from lamina.server.services.common import now
from lamina.server.services.events import record
from lamina.server.services.rows import JsonObject

#: Below this many free bytes an endpoint counts as low on disk.
LOW_DISK = 2 * 1024**3
MAX_SKEW = dt.timedelta(minutes=5)
#: The fields of a report that change all the time, and how stale their stored values may get.
VOLATILE = frozenset({"clock", "disk_free", "clock_skew"})
STORE_EVERY = dt.timedelta(seconds=10)


def _low(free: object) -> TypeGuard[int]:
    return isinstance(free, int) and free < LOW_DISK


def _skew(clock: object) -> dt.timedelta | None:
    """How far an agent's clock is from the server's (None: it sent none)."""
    if not isinstance(clock, dt.datetime):
        return None
    return abs((clock if clock.tzinfo else clock.replace(tzinfo=dt.UTC)) - now())


def worth_storing(before: JsonObject, after: JsonObject, stored_at: dt.datetime | None) -> bool:
    """Whether report ``after`` must be written over ``before`` (stored at ``stored_at``):
    it would record an event or change a lasting field, or the stored one is stale."""
    if stored_at is None or now() - stored_at >= STORE_EVERY:
        return True
    if any(before.get(k) != after.get(k) for k in (before.keys() | after.keys()) - VOLATILE):
        return True
    skew = _skew(after.get("clock"))
    return _low(after.get("disk_free")) != _low(before.get("disk_free")) or (
        skew is not None and (skew > MAX_SKEW) != bool(before.get("clock_skew"))
    )


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _events(before: JsonObject, after: JsonObject) -> list[tuple[str, str]]:
    """The events (level, message) report ``after`` brings over ``before``."""
    out: list[tuple[str, str]] = []
    err = after.get("last_error")
    if (
        after.get("state") == "error"
        and err
        and (before.get("state") != "error" or before.get("last_error") != err)
    ):
        out.append(("error", f"agent error: {err}"))
    free = after.get("disk_free")
    if _low(free) and not _low(before.get("disk_free")):
        out.append(("warning", f"disk low: {_gib(free)} free"))
    skew = _skew(after.get("clock"))
    if skew is not None and skew > MAX_SKEW and not before.get("clock_skew"):
        out.append(
            (
                "warning",
                f"clock skew: the endpoint's clock is {round(skew.total_seconds() / 60)} min off "
                "the server's",
            )
        )
    return out


def same_state(before: JsonObject, after: JsonObject) -> bool:
    """Whether report ``after`` keeps the agent's state of ``before`` and brings no event
    (a sync's progress, as a syncing agent posts it every second): such a report may
    be stored a moment later (``services/progress.py``) instead of before the answer."""
    return (
        after.get("state") == before.get("state")
        and after.get("last_error") == before.get("last_error")
        and not _events(before, after)
    )


def on_report(c: Connection, hostname: str, before: JsonObject, after: JsonObject) -> JsonObject:
    """Record the events ``after`` (this report) brings over ``before`` (the stored one);
    return ``after`` with what the server worked out (``clock_skew``) added."""
    for level, message in _events(before, after):
        record(c, level, "agent", hostname, message)
    after = dict(after)
    clock = after.get("clock")
    skew = _skew(clock)
    if isinstance(clock, dt.datetime):
        after["clock"] = clock.isoformat()
    after["clock_skew"] = skew is not None and skew > MAX_SKEW
    return after


def task_failed(c: Connection, kind: str, target: str, message: str) -> None:
    record(c, "error", "task", target, f"task {kind} failed: {message}"[:2000])
