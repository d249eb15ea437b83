"""The schema, frozen by golden files (``tests/db/golden/``).

``models.py`` and the Alembic revisions share their column definitions through
helpers (the column and table functions at the top of ``lamina.db.models``, and
``lamina.db.migrations.columns``): a change to a helper would silently change every
table, and every old revision, built with it.
These tests hold both to what they were before the helpers existed: the golden
files were made from the code as it stood then.

- ``models.txt``: each table of ``metadata`` as its columns' every attribute, its
  constraints and indexes, and its ``CREATE TABLE`` / ``CREATE INDEX`` on SQLite and
  PostgreSQL (compiled, no database).
- ``migrations-<dialect>.txt``: every statement that writes (DDL, and the
  ``alembic_version`` rows) that the migrations issue from an empty database up to
  ``HEAD`` and back down to nothing, on a real SQLite and a real PostgreSQL; and the
  schema at ``HEAD`` as the database itself reports it.

A deliberate schema change (a new revision) regenerates them:
``LAMINA_UPDATE_GOLDEN=1 pytest tests/db/test_schema_frozen.py``, and the diff of the
golden files is then part of the change a reviewer reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Column, Connection, Engine, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable, DefaultClause

from lamina.db.engine import make_engine
from lamina.db.migrate import alembic_config, upgrade
from lamina.db.models import metadata

GOLDEN = Path(__file__).parent / "golden"
DIALECTS: dict[str, Dialect] = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect()}
#: Statements that change a database; reflection (PRAGMA, SELECT) is left out.
WRITE_WORDS = {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE"}


def _compare(name: str, found: str) -> None:
    """``found`` must equal the golden file ``name`` (or, when asked, becomes it)."""
    path = GOLDEN / name
    if os.environ.get("LAMINA_UPDATE_GOLDEN") == "1":
        path.write_text(found)
        pytest.skip(f"wrote {path}")
    assert found == path.read_text(), f"{name} differs from its golden file"


# --- the models ----------------------------------------------------------------------


def _server_default(c: Column[Any]) -> str:
    d = c.server_default
    if d is None:
        return "None"
    assert isinstance(d, DefaultClause)
    return d.arg if isinstance(d.arg, str) else str(d.arg.compile(dialect=DIALECTS["sqlite"]))


def _column(c: Column[Any]) -> str:
    fks = sorted((fk.target_fullname, fk.ondelete) for fk in c.foreign_keys)
    return (
        f"  column {c.name} {c.type!r} key={c.key} nullable={c.nullable} pk={c.primary_key}"
        f" autoincrement={c.autoincrement!r} default={c.default!r}"
        f" server_default={_server_default(c)} index={c.index} unique={c.unique}"
        f" onupdate={c.onupdate!r} fks={fks}"
    )


def _table(t: Table) -> list[str]:
    out = [f"table {t.name}", *(_column(c) for c in t.columns)]
    for con in sorted(t.constraints, key=lambda k: (type(k).__name__, str(k.name))):
        out.append(f"  {type(con).__name__} {con.name} {[c.name for c in con.columns]}")
    for ix in sorted(t.indexes, key=lambda i: str(i.name)):
        out.append(f"  Index {ix.name} {[c.name for c in ix.columns]} unique={ix.unique}")
    for name, dialect in DIALECTS.items():
        out.append(f"  -- {name}")
        out.append(str(CreateTable(t).compile(dialect=dialect)).strip())
        for ix in sorted(t.indexes, key=lambda i: str(i.name)):
            out.append(str(CreateIndex(ix).compile(dialect=dialect)).strip())
    return out


def test_models_declare_the_frozen_schema() -> None:
    lines = [line for t in metadata.sorted_tables for line in _table(t)]
    _compare("models.txt", "\n".join(lines) + "\n")


# --- the migrations -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'frozen.db'}"
    else:
        url = request.getfixturevalue("pg_db_url")
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _schema_sql(sql: str) -> str:
    flat = " ".join(sql.split())
    return _constraints_sorted(flat) if flat.startswith("CREATE TABLE ") else flat


def _schema(engine: Engine) -> list[str]:
    """The schema as the database reports it (``alembic_version`` included)."""
    with engine.connect() as c:
        if engine.dialect.name == "sqlite":
            rows = c.execute(
                text(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master"
                    " WHERE name NOT LIKE 'sqlite_%' ORDER BY tbl_name, type, name"
                )
            )
            # The sql of a table Alembic copied keeps the copy's order: sorted, as above.
            return [" | ".join(_schema_sql(str(v)) for v in r) for r in rows]
        columns = c.execute(
            text(
                "SELECT table_name, ordinal_position, column_name, data_type,"
                " character_maximum_length, is_nullable, column_default"
                " FROM information_schema.columns WHERE table_schema = 'public'"
                " ORDER BY table_name, ordinal_position"
            )
        )
        constraints = c.execute(
            text(
                "SELECT conrelid::regclass::text AS t, conname, pg_get_constraintdef(oid)"
                " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
                " ORDER BY t, conname"
            )
        )
        indexes = c.execute(
            text(
                "SELECT tablename, indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = 'public' ORDER BY tablename, indexname"
            )
        )
        return [
            f"{kind} " + " | ".join(str(v) for v in r)
            for kind, rows in (("column", columns), ("constraint", constraints), ("index", indexes))
            for r in rows
        ]


def _canonical(statement: str) -> str:
    """One line; in the ``CREATE TABLE`` of a copy made by Alembic's batch mode on
    SQLite (``_alembic_tmp_*``), the constraints sorted: it copies them from the
    reflected table, in no fixed order (a set)."""
    flat = " ".join(statement.split())
    if not flat.startswith("CREATE TABLE _alembic_tmp_"):
        return flat
    return _constraints_sorted(flat)


def _constraints_sorted(flat: str) -> str:
    head, body = flat.split("(", 1)
    body, tail = body.rsplit(")", 1)
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(body[start:i].strip())
            start = i + 1
    items.append(body[start:].strip())
    columns = [i for i in items if not i.startswith("CONSTRAINT ")]
    constraints = sorted(i for i in items if i.startswith("CONSTRAINT "))
    return f"{head}( {', '.join(columns + constraints)} ){tail}"


def _indexes_sorted(statements: list[str]) -> list[str]:
    """The ``CREATE INDEX`` statements that follow a batch-mode copy's rename sorted:
    Alembic recreates the copied table's indexes in no fixed order."""
    out: list[str] = []
    run: list[str] = []
    for s in statements:
        if run and s.startswith("CREATE INDEX "):
            run.append(s)
            continue
        out += [run[0], *sorted(run[1:])] if run else []
        run = []
        if s.startswith("ALTER TABLE _alembic_tmp_"):
            run = [s]
        else:
            out.append(s)
    return out + ([run[0], *sorted(run[1:])] if run else [])


def test_migrations_emit_the_frozen_ddl(empty_engine: Engine) -> None:
    """Up from nothing to HEAD, then down to nothing: the same statements, the same schema."""
    issued: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_args: Any) -> None:
        words = statement.split(None, 1)
        if words and words[0].upper() in WRITE_WORDS:
            issued.append(f"{_canonical(statement)} {parameters!r}")

    event.listen(empty_engine, "before_cursor_execute", record)
    try:
        upgrade(empty_engine)
        up = list(issued)
        at_head = _schema(empty_engine)
        issued.clear()
        command.downgrade(alembic_config(empty_engine), "base")
        down = list(issued)
    finally:
        event.remove(empty_engine, "before_cursor_execute", record)
    left = _schema(empty_engine)

    report = ["-- upgrade base -> head", *_indexes_sorted(up), "-- schema at head", *at_head]
    report += ["-- downgrade head -> base", *_indexes_sorted(down), "-- schema at base", *left]
    _compare(f"migrations-{empty_engine.dialect.name}.txt", "\n".join(report) + "\n")


def _cvds(c: Connection, cvd_ids: list[str], when: str) -> None:
    """A policy and an active CVD of each of ``cvd_ids`` (rows the revisions' tests name)."""
    c.execute(
        text(
            "INSERT INTO policies (id, name, version, settings, created, updated) "
            "VALUES ('p', 'p', 1, '{}', :t, :t)"
        ),
        {"t": when},
    )
    for cvd in cvd_ids:
        c.execute(
            text(
                "INSERT INTO cvds (id, name, policy_id, policy_version, reference, state, "
                "created, progress, blobs_indexed) "
                "VALUES (:c, :c, 'p', 1, false, 'active', :t, '{}', true)"
            ),
            {"c": cvd, "t": when},
        )


def test_0012_keeps_every_ownership_row_both_ways(empty_engine: Engine) -> None:
    """``cvd_blobs`` rekeyed (blob first; on SQLite one b-tree, the table made again)
    and back: every row kept."""
    cfg = alembic_config(empty_engine)
    command.upgrade(cfg, "0011_task_reported")
    cvd_ids = ["a" * 36, "b" * 36]
    rows = {(bytes([i]) * 32, cvd) for i in range(5) for cvd in cvd_ids}
    when = "2026-12-01 00:00:00"
    with empty_engine.begin() as c:
        _cvds(c, cvd_ids, when)
        for bid, cvd in sorted(rows):
            c.execute(
                text("INSERT INTO cvd_blobs (cvd_id, blob_id) VALUES (:c, :b)"),
                {"c": cvd, "b": bid},
            )

    def held() -> set[tuple[bytes, str]]:
        with empty_engine.connect() as c:
            found = c.execute(text("SELECT blob_id, cvd_id FROM cvd_blobs")).all()
        return {(bytes(b), cvd) for b, cvd in found}

    command.upgrade(cfg, "0012_srvcpu")
    assert held() == rows
    command.downgrade(cfg, "0011_task_reported")
    assert held() == rows


def test_0013_keeps_every_claim_and_its_lease_both_ways(empty_engine: Engine) -> None:
    """``blob_claims`` without ``expires`` (a CVD's lease in ``blob_claimants``, the latest
    of its claims') and back (each claim its CVD's lease): every claim kept."""
    cfg = alembic_config(empty_engine)
    command.upgrade(cfg, "0012_srvcpu")
    cvd_ids = ["a" * 36, "b" * 36]
    early, late = "2026-12-01 00:00:00", "2026-12-01 01:00:00"
    rows = {(bytes([i]) * 32, cvd) for i in range(5) for cvd in cvd_ids}
    with empty_engine.begin() as c:
        _cvds(c, cvd_ids, early)
        for bid, cvd in sorted(rows):
            c.execute(
                text("INSERT INTO blob_claims (blob_id, cvd_id, expires) VALUES (:b, :c, :t)"),
                {"c": cvd, "b": bid, "t": late if bid[0] == 4 and cvd == "a" * 36 else early},
            )

    def claims() -> set[tuple[bytes, str]]:
        with empty_engine.connect() as c:
            found = c.execute(text("SELECT blob_id, cvd_id FROM blob_claims")).all()
        return {(bytes(b), cvd) for b, cvd in found}

    def leases() -> dict[str, str]:
        with empty_engine.connect() as c:
            found = c.execute(text("SELECT cvd_id, expires FROM blob_claimants")).all()
        return {cvd: str(t)[:19] for cvd, t in found}

    command.upgrade(cfg, "0013_srvsql")
    assert claims() == rows
    assert leases() == {"a" * 36: late, "b" * 36: early}
    command.downgrade(cfg, "0012_srvcpu")
    assert claims() == rows
    with empty_engine.connect() as c:
        expiry = c.execute(text("SELECT DISTINCT cvd_id, expires FROM blob_claims")).all()
    assert {(cvd, str(t)[:19]) for cvd, t in expiry} == {("a" * 36, late), ("b" * 36, early)}
