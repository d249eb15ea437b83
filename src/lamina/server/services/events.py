"""Events: what an administrator should see, by severity, until someone acknowledges it.

Other services record an event inside their own transaction with ``record(c, ...)``
(a failed task, a store check that found damage...); the console's dashboard counts
the unacknowledged ones by severity and lists them with an acknowledge button.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, func, insert, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import events
from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.protocol.ops import EventPublic
from lamina.server.security import Principal
from lamina.server.services.common import audit, aware, now

SEVERITIES = ("error", "warning", "info")
#: Acknowledging an event is operating the fleet: the permission help desk has.
ACK_PERMISSION = "cvd.operate"


#: An event as the API and the console show it.
Event = EventPublic


def record(c: Connection, severity: str, source: str, target: str, message: str) -> None:
    """Record an event in the caller's transaction."""
    if severity not in SEVERITIES:
        raise UsageError(f"event severity is one of {', '.join(SEVERITIES)}, not {severity!r}")
    c.execute(
        insert(events).values(
            time=now(),
            severity=severity,
            source=source[:64],
            target=target[:255],
            message=message,
        )
    )


def unacknowledged(engine: Engine, actor: Principal) -> dict[str, int]:
    """How many events wait for acknowledgement, by severity (every severity present)."""
    actor.require("read")
    with read_tx(engine) as c:
        rows = c.execute(
            select(events.c.severity, func.count())
            .where(events.c.acknowledged.is_(None))
            .group_by(events.c.severity)
        ).all()
    counts = dict.fromkeys(SEVERITIES, 0)
    counts.update({sev: int(n) for sev, n in rows})
    return counts


def list_events(
    engine: Engine, actor: Principal, pending_only: bool = False, limit: int = 100
) -> list[Event]:
    """Newest first; ``pending_only``: only those not acknowledged yet."""
    actor.require("read")
    if not 1 <= limit <= 1000:
        raise UsageError("limit must be between 1 and 1000")
    q = select(events).order_by(events.c.id.desc()).limit(limit)
    if pending_only:
        q = q.where(events.c.acknowledged.is_(None))
    with read_tx(engine) as c:
        rows = c.execute(q).mappings()
        return [
            Event.model_validate(
                {**r, "time": aware(r["time"]), "acknowledged": aware(r["acknowledged"])}
            )
            for r in rows
        ]


def acknowledge(engine: Engine, actor: Principal, event_id: int) -> None:
    actor.require(ACK_PERMISSION)
    with write_tx(engine) as c:
        row = c.execute(select(events).where(events.c.id == event_id)).first()
        if row is None:
            raise NotFoundError(f"no event {event_id}")
        if row.acknowledged is not None:
            raise ConflictError(f"event {event_id} was acknowledged by {row.acknowledged_by}")
        c.execute(
            update(events)
            .where(events.c.id == event_id)
            .values(acknowledged=now(), acknowledged_by=actor.name)
        )
        audit(c, actor.name, "event.acknowledge", str(event_id), severity=row.severity)
