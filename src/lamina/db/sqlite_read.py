"""A SQLite catalog's snapshot records read through the standard library's ``sqlite3``.

``lamina snapshot list`` opens the store and prints its snapshots: importing
SQLAlchemy and the table definitions was most of its start-up (restic lists its
snapshots in half the time). On the embedded SQLite database, a command that only
reads snapshots reads them here, with the same meaning as ``SqlCatalog.snapshots``
(tests/db/test_sqlite_read.py compares the two). It only reads, and only a database
at the newest schema (:data:`lamina.db.migrate.HEAD`) that already indexes this
store: anything else (:func:`read_snapshots` returns None) goes the usual way,
through ``lamina.db.stores.open_store``, which migrates and binds.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lamina.db.migrate import HEAD
from lamina.errors import BackendError, StoreKeyError
from lamina.store.catalog import SnapshotRecord

#: ``SqlCatalog.snapshots``'s query (oldest first; ``seq`` breaks ties).
_SNAPSHOTS = (
    "SELECT id, time, source, root, files, bytes, meta FROM snapshots{where} ORDER BY time, seq"
)


#: ``store_state``'s key of the gc epoch.
EPOCH_KEY = "gc_epoch"
#: Ids per ``IN (...)`` list.
BATCH = 500
# The statements ``SqlCatalog`` runs on SQLite and ``SqliteCatalog`` runs everywhere (the
# two lookups every backup and restore makes thousands of times, and the index rows of a
# pack): building, caching and expanding a SQLAlchemy statement cost about as much as the
# query itself. Same meaning as the Core statements ``SqlCatalog`` uses for PostgreSQL.
SQLITE_MISSING = "SELECT id FROM blobs WHERE id IN (%s) AND condemned = 0"
SQLITE_INSERT = (
    'INSERT INTO blobs (id, pack_seq, kind, "offset", length, raw_length, condemned) '
    "VALUES (?, ?, ?, ?, ?, ?, 0)"
)
SQLITE_KNOWN = "SELECT id FROM blobs WHERE kind = ? AND condemned = 0 LIMIT ?"
_SQLITE_LOCATE = (
    "SELECT blobs.id, packs.name, blobs.offset, blobs.length, blobs.raw_length, blobs.kind "
    "FROM blobs JOIN packs ON packs.seq = blobs.pack_seq WHERE blobs.id IN (%s)"
)


def locate_query(
    batch: list[bytes], include_condemned: bool, kind: int | None
) -> tuple[str, tuple[object, ...]]:
    """``SqlCatalog.locate``'s statement and parameters for one batch of ids; its rows
    are (id, pack name, offset, length, raw length, kind)."""
    sql = _SQLITE_LOCATE % marks(len(batch))
    args: tuple[object, ...] = tuple(batch)
    if not include_condemned:
        sql += " AND blobs.condemned = 0"
    if kind is not None:
        sql += " AND blobs.kind = ?"
        args += (kind,)
    return sql, args


def marks(n: int) -> str:
    """``n`` parameter marks for an ``IN (...)`` list."""
    return ",".join("?" * n)


def batches(items: Iterable[bytes], size: int = BATCH) -> Iterator[list[bytes]]:
    """``items`` in lists of at most ``size``."""
    every = list(items)
    for k in range(0, len(every), size):
        yield every[k : k + size]


def snapshot_record(
    id: str, time: Any, source: str, root: bytes, files: int, bytes_: int, meta: Any
) -> SnapshotRecord:
    """A snapshot row as a record: ``time`` a datetime (naive means UTC, as SQLite keeps
    it) or SQLite's text form of one, ``meta`` a dict or its JSON text."""
    if isinstance(time, str):
        time = dt.datetime.fromisoformat(time)
    if isinstance(meta, str):
        meta = json.loads(meta)
    return SnapshotRecord(
        id=id,
        time=time if time.tzinfo else time.replace(tzinfo=dt.UTC),
        source=source,
        root=bytes(root),
        files=files,
        bytes=bytes_,
        meta=dict(meta or {}),
    )


def bound_connection(database: Path, store_id: str, **connect: Any) -> sqlite3.Connection | None:
    """A connection (``sqlite3.connect``'s ``connect`` arguments) to the SQLite catalog at
    ``database``; None when the file is absent, its schema is not :data:`HEAD`, or it
    indexes no store yet. A database of another store is a ``StoreKeyError``, as
    ``SqlCatalog.bind_store`` says it."""
    if not database.is_file():
        return None
    try:
        conn: sqlite3.Connection = sqlite3.connect(database, timeout=60, **connect)
    except sqlite3.Error as e:
        raise BackendError(f"database error: {e}") from e
    try:
        conn.execute("PRAGMA busy_timeout=60000")
        try:
            (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone() or (
                None,
            )
            row = conn.execute("SELECT value FROM store_state WHERE key = 'store_id'").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            return None  # not migrated yet, or not a database: the usual way says which
        if revision != HEAD or row is None:
            conn.close()
            return None
        if row[0] != store_id:
            raise StoreKeyError(
                f"the database indexes store {row[0]}, but the key file is for store {store_id}"
            )
    except sqlite3.Error as e:
        conn.close()
        raise BackendError(f"database error: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def snapshots_of(conn: sqlite3.Connection, source: str | None = None) -> list[SnapshotRecord]:
    """``SqlCatalog.snapshots`` on a connection of the standard library."""
    if source is None:
        rows = conn.execute(_SNAPSHOTS.format(where="")).fetchall()
    else:
        rows = conn.execute(_SNAPSHOTS.format(where=" WHERE source = ?"), (source,)).fetchall()
    return [snapshot_record(*r) for r in rows]


def read_snapshots(
    database: Path, store_id: str, source: str | None = None
) -> list[SnapshotRecord] | None:
    """The snapshots of the SQLite catalog at ``database``, oldest first (of ``source``
    only, if given); None as :func:`bound_connection` says."""
    conn = bound_connection(database, store_id)
    if conn is None:
        return None
    try:
        return snapshots_of(conn, source)
    except sqlite3.Error as e:
        raise BackendError(f"database error: {e}") from e
    finally:
        conn.close()
