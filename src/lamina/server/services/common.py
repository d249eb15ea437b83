"""Helpers every service needs: time, ids, audit rows, lookups by id or unique name."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Connection, Row, Table, insert, or_, select

from lamina.db.models import audit_log
from lamina.errors import ConflictError, NotFoundError


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def aware(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def audit(c: Connection, actor: str, action: str, target: str, **detail: Any) -> None:
    """Record an admin action in the same transaction as the action itself."""
    c.execute(
        insert(audit_log).values(
            time=now(), actor=actor, action=action, target=target, detail=detail
        )
    )


def find_one(c: Connection, table: Table, ref: str, name_col: str, what: str) -> Row[Any]:
    """A row by id or by its unique name; an ambiguous name is a conflict."""
    rows = c.execute(
        select(table).where(or_(table.c.id == ref, table.c[name_col] == ref)).limit(2)
    ).all()
    exact = [r for r in rows if r.id == ref]
    if exact:
        return exact[0]
    if not rows:
        raise NotFoundError(f"no {what} {ref!r}")
    if len(rows) > 1:
        raise ConflictError(f"{what} name {ref!r} is ambiguous: use its id")
    return rows[0]
