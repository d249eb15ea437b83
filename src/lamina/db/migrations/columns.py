"""What the revisions' tables have in common, spelled once: each revision then reads as
what it adds.

Constraint and index names are given, never left to the naming convention, and are the
names that convention gives (``pk_<table>``, ``uq_<table>_<column>``,
``fk_<table>_<column>_<referred table>``, ``ix_<table>_<column>``).

Every revision imports these, the old ones too: a change here changes what an old
revision did. So a helper's output never changes (``tests/db/test_schema_frozen.py``
holds every statement the migrations issue, on SQLite and PostgreSQL, to a golden
file); a new need gets a new helper.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def timestamp(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    """A point in time, with its time zone."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def uuid(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    """A row's UUID, or a reference to one."""
    return sa.Column(name, sa.String(length=36), nullable=nullable)


def primary_key(table: str, *columns: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*columns, name=op.f(f"pk_{table}"))


def unique(table: str, column: str) -> sa.UniqueConstraint:
    return sa.UniqueConstraint(column, name=op.f(f"uq_{table}_{column}"))


def foreign_key(
    table: str, column: str, target: str, *, ondelete: str | None = None
) -> sa.ForeignKeyConstraint:
    """``table.column`` refers to ``target`` (``"other.id"``)."""
    referred = target.split(".")[0]
    name = op.f(f"fk_{table}_{column}_{referred}")
    return sa.ForeignKeyConstraint([column], [target], name=name, ondelete=ondelete)


def create_index(table: str, column: str) -> None:
    op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def drop_index(table: str, column: str) -> None:
    op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)


def create_uuid_table(table: str, *items: sa.schema.SchemaItem) -> None:
    """A table whose rows are named by a UUID: ``id`` (the primary key), then ``items``."""
    op.create_table(table, uuid("id"), *items, primary_key(table, "id"))


def create_named_table(table: str, *items: sa.schema.SchemaItem, updated: bool = False) -> None:
    """A table of things an administrator names: ``id`` (the primary key) and a unique
    ``name`` first, then ``items``, then when each was ``created`` (and ``updated``)."""
    stamps = [timestamp("created"), *([timestamp("updated")] if updated else [])]
    name = sa.Column("name", sa.String(length=128), nullable=False)
    create_uuid_table(table, name, *items, *stamps, unique(table, "name"))


def create_versions_table(table: str, of: str, target: str, *items: sa.schema.SchemaItem) -> None:
    """The numbered versions of a thing: ``id``, the thing ``of`` (a reference to
    ``target``, deleted with it), the ``version`` (one row per thing and number), when it
    was ``created``, then ``items``."""
    create_uuid_table(
        table,
        uuid(of),
        sa.Column("version", sa.Integer(), nullable=False),
        timestamp("created"),
        *items,
        foreign_key(table, of, target, ondelete="CASCADE"),
        sa.UniqueConstraint(of, "version", name=f"uq_{table}_{of}_version"),
    )


def create_link_table(table: str, first: tuple[str, str], second: tuple[str, str]) -> None:
    """A many-to-many link: one row per pair of UUIDs, each a ``(column, target)``
    reference, deleted with either row it names."""
    (a, a_target), (b, b_target) = first, second
    op.create_table(
        table,
        uuid(a),
        uuid(b),
        foreign_key(table, a, a_target, ondelete="CASCADE"),
        foreign_key(table, b, b_target, ondelete="CASCADE"),
        primary_key(table, a, b),
    )


# --- a table a later revision drops: its downgrade makes it again, the same ------------


def create_login_failures() -> None:
    """Failed logins, one row each (revision 0002; 0005 replaced it by ``login_throttle``)."""
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        timestamp("time"),
        primary_key("login_failures", "id"),
    )
    create_index("login_failures", "name")
