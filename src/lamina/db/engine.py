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
- On PostgreSQL every statement is a round trip, and under load each round trip also
  waits for the interpreter lock and a core: a poll's time is its round trips
  (docs/design.md, "Polls under load (session 13)"). So a pooled connection is tested
  only when it sat idle for ``PING_IDLE_SECONDS`` (SQLAlchemy's ``pool_pre_ping`` tests it
  at every checkout: one round trip more per transaction), and a read that needs no
  snapshot across statements (``read_once``) sends no BEGIN and no COMMIT.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry

from lamina.db import sqlite_pragmas
from lamina.db.sqlite_pragmas import BUSY_SECONDS as BUSY_SECONDS
from lamina.db.sqlite_pragmas import WAL_LIMIT as WAL_LIMIT
from lamina.errors import BackendError, UsageError

log = logging.getLogger(__name__)

#: Connections kept open, and how many more a burst may open (per engine).
POOL_SIZE, POOL_OVERFLOW = 8, 48
#: A PostgreSQL connection back in the pool for longer than this is tested before use (a
#: server restart or an idle timeout may have closed it); one used since is not.
PING_IDLE_SECONDS = 10.0
#: Seconds ``truncate_log`` waits for SQLite's readers before leaving the log as it is.
TRUNCATE_WAIT = 0.1
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
        engine = create_engine(url, pool_size=5, max_overflow=25, pool_timeout=BUSY_SECONDS)
        _ping_when_idle(engine)
        return engine
    raise UsageError(f"unsupported database URL {url!r} (use sqlite:/// or postgresql://)")


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can ask
        # for BEGIN IMMEDIATE and never deadlock upgrading a read lock.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        sqlite_pragmas.tune(cur)
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("lamina_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection at checkout only if it sat in the pool for more than
    ``PING_IDLE_SECONDS``. A connection that fails the test is replaced by a new one (the
    pool's own handling of ``DisconnectionError``); one that breaks while in use fails
    its transaction (``BackendError``, 503: the agent tries again) and makes SQLAlchemy
    replace every connection of the pool older than the failure."""

    @event.listens_for(engine.pool, "checkin")
    def _checkin(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since <= PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as e:
            raise DisconnectionError(f"pooled connection failed its test: {e}") from e


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def truncate_log(engine: Engine) -> bool:
    """Copy a SQLite database's write-ahead log into it and cut the log's file to nothing
    (``PRAGMA wal_checkpoint(TRUNCATE)``), in this process's writers' turn, waiting at
    most ``TRUNCATE_WAIT`` for readers of older pages. For a quiet moment: the log is
    otherwise kept up to ``WAL_LIMIT`` between syncs (``db.sqlite_pragmas``). True when
    the file was cut; False on PostgreSQL, when readers held it or on a failure (logged:
    the log is only left as long as it was)."""
    if not is_sqlite(engine):
        return False
    try:
        with _writer_turn(engine), engine.connect() as conn:
            raw: Any = conn.connection.driver_connection
            raw.execute(f"PRAGMA busy_timeout={int(TRUNCATE_WAIT * 1000)}")
            try:
                busy, _frames, _copied = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                raw.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
    except (BackendError, OperationalError, engine.dialect.loaded_dbapi.Error) as e:
        log.warning("cannot cut the database's write-ahead log back: %s", e)
        return False
    return not busy


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """One write transaction: the unit of work that owns a commit."""
    with _writer_turn(engine):
        try:
            with _database_errors(), engine.connect() as conn:
                conn = conn.execution_options(lamina_write=True)
                with conn.begin():
                    yield conn
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
    with _database_errors(), engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def read_once(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that need no snapshot shared between statements (one
    statement, as a poll's answer). On PostgreSQL it runs in autocommit: no BEGIN and no
    COMMIT round trip around the statement, which sees what is committed when it runs,
    as in a READ COMMITTED transaction. On SQLite, where both are local calls, a read
    transaction. Never for writes: each statement would commit on its own."""
    if is_sqlite(engine):
        with read_tx(engine) as c:
            yield c
        return
    with _database_errors(), engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def _database_errors() -> Iterator[None]:
    """The database's failures as ``BackendError`` (503: the client tries again)."""
    try:
        yield
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
