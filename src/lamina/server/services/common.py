"""Helpers every service needs: time, ids, audit rows, lookups by id or unique name."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import TypeVar, overload

from pydantic import BaseModel
from sqlalchemy import Connection, Row, Table, func, insert, or_, select

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


M = TypeVar("M", bound=BaseModel)


def from_row(model: type[M], row: object, **given: object) -> M:
    """The public view ``model`` of a row: each field the row's attribute of the same
    name (a time made aware, as ``aware``), but for the fields ``given``, which are
    computed or named otherwise. A field given that ``model`` lacks is a bug."""
    unknown = given.keys() - model.model_fields.keys()
    if unknown:
        raise TypeError(f"{model.__name__} has no field {', '.join(sorted(unknown))}")
    values: dict[str, object] = {}
    for name in model.model_fields.keys() - given.keys():
        if hasattr(row, name):
            v = getattr(row, name)
            values[name] = aware(v) if isinstance(v, dt.datetime) else v
    return model.model_validate(values | given)


def audit(c: Connection, actor: str, action: str, target: str, **detail: object) -> int:
    """Record an admin action in the same transaction as the action itself; its row's id."""
    row = c.execute(
        insert(audit_log)
        .values(time=now(), actor=actor, action=action, target=target, detail=detail)
        .returning(audit_log.c.id)
    )
    return int(row.scalar_one())


def insert_version(c: Connection, table: Table, of: str, parent_id: str, **values: object) -> int:
    """Insert the next version of ``parent_id`` (a layer, an image) into ``table``, whose
    column ``of`` names the parent: numbered one more than its highest (1 if none), with
    a new id and the time now. Returns its number."""
    latest = c.execute(select(func.max(table.c.version)).where(table.c[of] == parent_id)).scalar()
    version = (latest or 0) + 1
    c.execute(
        insert(table).values(
            id=new_id(), version=version, created=now(), **{of: parent_id}, **values
        )
    )
    return version


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
