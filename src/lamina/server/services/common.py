"""Helpers every service needs: time, ids, audit rows, lookups by id or unique name."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import overload

from sqlalchemy import Column, ColumnElement, Connection, Row, Table, func, insert, or_, select

from lamina.db.models import audit_log
from lamina.errors import ConflictError, NotFoundError


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


@overload
def aware(t: dt.datetime) -> dt.datetime: ...
@overload
def aware(t: dt.datetime | None) -> dt.datetime | None: ...
def aware(t: dt.datetime | None) -> dt.datetime | None:
    """A time read back from the database as UTC-aware (SQLite returns it naive)."""
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def audit(c: Connection, actor: str, action: str, target: str, **detail: object) -> int:
    """Record an admin action in the same transaction as the action itself; its row's id."""
    row = c.execute(
        insert(audit_log)
        .values(time=now(), actor=actor, action=action, target=target, detail=detail)
        .returning(audit_log.c.id)
    )
    return int(row.scalar_one())


def next_number(c: Connection, column: Column[int], *where: ColumnElement[bool]) -> int:
    """One more than the highest ``column`` among the rows ``where`` selects (1 if none):
    the next version of a layer or an image."""
    return (c.execute(select(func.max(column)).where(*where)).scalar() or 0) + 1


#: A row of one of the tables (its columns are attributes; ``services/rows.py`` types them).
TableRow = Row[tuple[object, ...]]

#: How short an id prefix may be, and how many ids an ambiguous reference lists.
MIN_PREFIX = 4
LIST_IDS = 10


def _ambiguous(
    what: str, ref: str, rows: Sequence[TableRow], name_col: str | None
) -> ConflictError:
    shown = [f"{r.id} ({getattr(r, name_col)})" if name_col else str(r.id) for r in rows[:LIST_IDS]]
    more = " ..." if len(rows) > LIST_IDS else ""
    return ConflictError(
        f"{what} {ref!r} is ambiguous: it could mean {', '.join(shown)}{more}; give one of these ids"
    )


def find_by_id(c: Connection, table: Table, ref: str, what: str) -> TableRow:
    """A row by its id or by a unique prefix of it (at least ``MIN_PREFIX`` characters)."""
    r = c.execute(select(table).where(table.c.id == ref)).first()
    if r is not None:
        return r
    return _only(what, ref, _by_prefix(c, table, ref), None)


def find_one(c: Connection, table: Table, ref: str, name_col: str, what: str) -> TableRow:
    """A row by id, by its unique name, or by a unique prefix of its id; an ambiguous
    name or prefix is a conflict that lists the ids it could mean."""
    rows: Sequence[TableRow] = c.execute(
        select(table).where(or_(table.c.id == ref, table.c[name_col] == ref)).limit(LIST_IDS + 1)
    ).all()
    exact = [r for r in rows if r.id == ref]
    if exact:
        return exact[0]
    return _only(what, ref, rows or _by_prefix(c, table, ref), name_col)


def _by_prefix(c: Connection, table: Table, ref: str) -> Sequence[TableRow]:
    """The rows whose id starts with ``ref`` (none for a prefix under ``MIN_PREFIX``)."""
    if len(ref) < MIN_PREFIX:
        return []
    return c.execute(
        select(table).where(table.c.id.startswith(ref, autoescape=True)).limit(LIST_IDS + 1)
    ).all()


def _only(what: str, ref: str, rows: Sequence[TableRow], name_col: str | None) -> TableRow:
    """The one row ``ref`` found; not found or ambiguous otherwise."""
    if not rows:
        raise NotFoundError(f"no {what} {ref!r}")
    if len(rows) > 1:
        raise _ambiguous(what, ref, rows, name_col)
    return rows[0]
