"""The audit log, filtered by user, action and time, newest first, paged on the server."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, select

from lamina.db.engine import read_tx
from lamina.db.models import audit_log
from lamina.errors import UsageError
from lamina.protocol.schemas import AuditPublic
from lamina.server.security import Principal
from lamina.server.services.common import aware
from lamina.server.services.rows import AuditEntry


def search(
    engine: Engine,
    actor: Principal,
    user: str = "",
    action: str = "",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditPublic]:
    """Entries matching every filter given (``action`` may end in ``*``, e.g. ``cvd.*``)."""
    actor.require("user.admin")
    if not 1 <= limit <= 1000:
        raise UsageError("limit must be between 1 and 1000")
    q = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if user:
        q = q.where(audit_log.c.actor == user)
    if action.endswith("*"):
        q = q.where(audit_log.c.action.startswith(action[:-1], autoescape=True))
    elif action:
        q = q.where(audit_log.c.action == action)
    if since:
        q = q.where(audit_log.c.time >= since)
    if until:
        q = q.where(audit_log.c.time < until)
    if before_id:
        q = q.where(audit_log.c.id < before_id)
    with read_tx(engine) as c:
        return [entry_public(r) for r in c.execute(q)]


def entry_public(r: AuditEntry) -> AuditPublic:
    return AuditPublic(
        id=str(r.id),
        time=aware(r.time),
        actor=r.actor,
        action=r.action,
        target=r.target,
        detail=r.detail,
    )
