"""Engines and transactions for SQLite (embedded default) and PostgreSQL (scale-out)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError

from lamina.errors import BackendError, UsageError


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    if url.startswith("postgres://") or url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        _tune_sqlite(engine)
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    raise UsageError(f"unsupported database URL {url!r} (use sqlite:/// or postgresql://)")


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can ask
        # for BEGIN IMMEDIATE and never deadlock upgrading a read lock.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("lamina_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """One write transaction: the unit of work that owns a commit."""
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(lamina_write=True)
            with conn.begin():
                yield conn
    except OperationalError as e:
        raise BackendError(f"database error: {e.orig}") from e


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    try:
        with engine.connect() as conn, conn.begin():
            yield conn
    except OperationalError as e:
        raise BackendError(f"database error: {e.orig}") from e


def driver_rows(c: Connection, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` (the driver's own SQL and parameters) as the driver returns
    them, run on ``c``'s connection inside its transaction: for lookups of thousands of
    blob ids, where building a SQLAlchemy row for each cost about as much as the query."""
    cursor = c.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, args)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    finally:
        cursor.close()
    return rows
