"""The lease check: may this instance start now, by the last lease the server signed?

Online, the client checks in first and gets a fresh lease; offline it has only the
last one, and the laptop's clock. The client remembers the *last trusted time*: the
latest of every server ``issued_at`` it verified and every local time it saw when it
started an instance. A clock earlier than that (beyond :data:`CLOCK_SKEW`) means it
was set back, and the instance does not start. Past ``lease_until`` or ``expires_at``
it does not start either, until a check-in renews the lease.
"""

from __future__ import annotations

import datetime as dt

from lamina.errors import ForbiddenError, IntegrityError
from lamina.protocol.flex import Lease

#: How far the laptop's clock may lag the server's (or its own earlier reading).
CLOCK_SKEW = dt.timedelta(minutes=5)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_state(lease: Lease) -> None:
    """Refuse a locked instance with the administrator's message (revoke is the caller's job:
    it deletes the key and disk first)."""
    if lease.state == "locked":
        msg = f": {lease.message}" if lease.message else ""
        raise ForbiddenError(f"instance {lease.instance_id} is locked by the administrator{msg}")
    if lease.state == "revoked":
        raise ForbiddenError(f"instance {lease.instance_id} is revoked")


def check_time(lease: Lease, now: dt.datetime, trusted: dt.datetime | None) -> None:
    """Refuse when the clock was set back, the lease ended, or the image expired."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if trusted is not None and now < trusted - CLOCK_SKEW:
        raise ForbiddenError(
            f"the clock says {_iso(now)}, before the last trusted time {_iso(trusted)}: "
            "it was set back; fix the clock or check in with the server"
        )
    if lease.expires_at is not None and now >= lease.expires_at:
        raise ForbiddenError(f"instance {lease.instance_id} expired at {_iso(lease.expires_at)}")
    if now >= lease.lease_until:
        raise ForbiddenError(
            f"the lease of instance {lease.instance_id} ended at {_iso(lease.lease_until)}: "
            "connect to the server to check in (`lamina flex-client checkin`)"
        )


def accept_renewal(old: Lease | None, new: Lease, instance_id: str) -> None:
    """A checked-in lease must name this instance and be no older than the one kept (a replayed
    older lease could carry a longer policy or an unlock)."""
    if new.instance_id != instance_id:
        raise IntegrityError(
            f"the server's lease names instance {new.instance_id}, expected {instance_id}"
        )
    if old is not None and new.issued_at < old.issued_at:
        raise IntegrityError(
            f"the server's lease was issued at {_iso(new.issued_at)}, before the one kept "
            f"({_iso(old.issued_at)}): refused as a replay"
        )


def advance(trusted: dt.datetime | None, *seen: dt.datetime) -> dt.datetime:
    """The new last trusted time: the latest of the old one and the times just seen."""
    times = [t for t in (trusted, *seen) if t is not None]
    return max(times)


def deadline(lease: Lease) -> dt.datetime:
    """When a running VM must stop: the lease's end (which already respects expiry)."""
    return (
        lease.lease_until if lease.expires_at is None else min(lease.lease_until, lease.expires_at)
    )


#: Bounds of how often a running instance checks in (seconds).
CHECKIN_MIN, CHECKIN_MAX = 30.0, 300.0


def checkin_interval(lease: Lease) -> float:
    """How often a running VM checks in: a quarter of the policy's lease, within
    [30 s, 5 min], so a lock or revoke reaches it soon and the lease is renewed well
    before it ends."""
    return min(CHECKIN_MAX, max(CHECKIN_MIN, lease.policy.lease_seconds / 4))
