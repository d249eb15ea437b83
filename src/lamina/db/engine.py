"""Engines and transactions for SQLite (embedded default) and PostgreSQL (scale-out).

Under load (hundreds of agents reporting and uploading at once, `make bench-load`):

- The pools hold a connection for each of the server's worker threads (anyio's 40) and
  more, so a request never waits for a connection behind requests that wait for the
  database; a wait that still runs out is a ``BackendError`` (503, the agent tries
  again), never an unhandled error.
- SQLite takes one writer at a time. The writers of one process queue on a lock of the
  engine, each woken as soon as the one before commits, instead of polling SQLite's
  lock with its busy handler's growing sleeps (up to 100 ms each, no order: under load
  a writer could wait seconds while others passed it) with a pooled connection held.
  Writers of other processes (an admin's command) still meet SQLite's busy timeout.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from lamina.errors import BackendError, UsageError

#: Seconds a transaction waits for the database (SQLite's lock, a pooled connection).
BUSY_SECONDS = 60
#: Connections kept open, and how many more a burst may open (per engine).
POOL_SIZE, POOL_OVERFLOW = 8, 48
#: SQLite engines' writer locks (one per engine, so per database file and process).
_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
#: What runs after each write transaction of an engine ends, committed or not (``after_writes``).
_AFTER_WRITES: weakref.WeakKeyDictionary[Engine, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    if url.startswith("postgres://") or url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": BUSY_SECONDS, "check_same_thread": False},
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            pool_timeout=BUSY_SECONDS,
        )
        _tune_sqlite(engine)
        _WRITERS[engine] = threading.RLock()
        return engine
    if url.startswith("postgresql"):
        # Fewer than SQLite's: each is a PostgreSQL backend, and two servers (and the
        # admin's commands) must stay under its max_connections (100 by default).
        return create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=25, pool_timeout=BUSY_SECONDS
        )
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
        cur.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
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
    with _writer_turn(engine):
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(lamina_write=True)
                with conn.begin():
                    yield conn
        except OperationalError as e:
            raise BackendError(f"database error: {e.orig}") from e
        except PoolTimeout as e:
            raise BackendError(f"database busy: {e}") from e
        finally:
            for hook in _AFTER_WRITES.get(engine, ()):
                hook()


def after_writes(engine: Engine, hook: Callable[[], None]) -> None:
    """Call ``hook`` after each of ``engine``'s write transactions (``write_tx``) ends:
    once its commit (or rollback) returned, so a transaction begun after it sees it. It
    runs in the writer's thread, in its turn: it must be quick and must not raise."""
    _AFTER_WRITES.setdefault(engine, []).append(hook)


@contextmanager
def _writer_turn(engine: Engine) -> Iterator[None]:
    """This thread's turn among the process's writers of a SQLite database (none needed
    for PostgreSQL). Re-entrant, as SQLite's own lock is not: a nested write transaction
    still fails on SQLite's busy timeout, as it always did."""
    lock = _WRITERS.get(engine)
    if lock is None:
        yield
        return
    if not lock.acquire(timeout=BUSY_SECONDS):
        raise BackendError(f"database busy: no write turn within {BUSY_SECONDS} s")
    try:
        yield
    finally:
        lock.release()


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    try:
        with engine.connect() as conn, conn.begin():
            yield conn
    except OperationalError as e:
        raise BackendError(f"database error: {e.orig}") from e
    except PoolTimeout as e:
        raise BackendError(f"database busy: {e}") from e


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
