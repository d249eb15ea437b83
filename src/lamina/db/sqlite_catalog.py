"""The embedded store's catalog through the standard library's ``sqlite3``, for a backup
or a restore.

``lamina snapshot create`` into the embedded store (``DATA/lamina.db``) spent about
0.3 s of CPU importing SQLAlchemy and the table definitions: half of an unchanged
re-backup's CPU on a small tree, and the same again in every re-backup of a large one.
A backup asks the catalog a handful of things (what is missing, the gc epoch, a pack
begun and committed, the snapshot row); :class:`SqliteCatalog` answers those with the
same SQL and the same rows as ``SqlCatalog``'s SQLite branch, and hands every other
question to a ``SqlCatalog`` it makes on first use (SQLAlchemy loaded then, and only
then: a backup whose commit races a garbage collection, for one).

Only a database already at the newest schema (:data:`lamina.db.migrate.HEAD`) and
bound to this store is opened here (``sqlite_read.bound_connection``); anything else
(:func:`open_embedded` returns None) goes the usual way, which migrates and binds.

Same rules as ``lamina.db.engine``: every connection in WAL mode with
``synchronous=FULL`` and foreign keys on; writers take ``BEGIN IMMEDIATE`` one at a
time within the process; a database error is a ``BackendError``. Times are stored as
SQLAlchemy stores a ``DateTime`` on SQLite (UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``), meta
as JSON text (tests/db/test_sqlite_catalog.py reads them back through ``SqlCatalog``).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.db import sqlite_pragmas
from lamina.db.location import StoreLocation
from lamina.db.sqlite_pragmas import BUSY_SECONDS
from lamina.db.sqlite_read import (
    EPOCH_KEY,
    SQLITE_INSERT,
    SQLITE_KNOWN,
    SQLITE_MISSING,
    batches,
    bound_connection,
    locate_query,
    marks,
    snapshots_of,
)
from lamina.errors import BackendError, NotFoundError, StoreBusyError, UsageError
from lamina.store.blob import KINDS, BlobKind
from lamina.store.catalog import (
    PACK_OK,
    PACK_WRITING,
    BlobLocation,
    SnapshotRecord,
    find_in,
    one_entry_per_id,
    pack_taken,
)

if TYPE_CHECKING:
    from lamina.db.catalog import SqlCatalog
    from lamina.store.catalog import BlobRow, PackInfo
    from lamina.store.pack import PackEntry
    from lamina.store.repository import Store

_RESCUE = "UPDATE blobs SET condemned = 0 WHERE id IN (%s) AND condemned = 1"
_HELD = "SELECT id FROM blobs WHERE id IN (%s)"


def _stamp(t: dt.datetime) -> str:
    """A time as SQLAlchemy's SQLite ``DateTime`` stores it (UTC, naive)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def open_embedded(loc: StoreLocation, pack_size: int) -> Store | None:
    """The embedded store at ``loc`` on a :class:`SqliteCatalog`, or None when it is not
    one this module opens (another database, or one not migrated and bound yet)."""
    from lamina.store.backends import open_backend
    from lamina.store.keys import read_keyfile
    from lamina.store.repository import Store

    database = loc.data / "lamina.db"
    if loc.db_url is not None or not database.is_file():
        return None  # the usual way says what is missing, in its order
    keys = read_keyfile(loc.keys_path, loc.passphrase)
    first = bound_connection(database, keys.store_id, check_same_thread=False)
    if first is None:
        return None
    catalog = SqliteCatalog(database, loc, first)
    store = Store(open_backend(loc.packs), catalog, keys, pack_size=pack_size)
    try:
        store.verify_config()
    except BaseException:
        store.close()
        raise
    return store


class SqliteCatalog:
    """``Catalog`` on the embedded SQLite database without SQLAlchemy (see the module).

    Thread-safe: one connection per thread; writers take turns.
    """

    def __init__(self, database: Path, loc: StoreLocation, first: sqlite3.Connection) -> None:
        self.database = database
        self._loc = loc
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_turn = threading.Lock()
        self._full: SqlCatalog | None = None
        self._adopt(first)

    # --- connections and transactions ----------------------------------------
    def _adopt(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        conn.isolation_level = None  # transactions are begun here, as lamina.db.engine does
        sqlite_pragmas.tune(conn)
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._adopt(
                sqlite3.connect(self.database, timeout=BUSY_SECONDS, check_same_thread=False)
            )
        return conn

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Cursor]:
        """One transaction (``BEGIN IMMEDIATE`` for a writer, in its turn)."""
        if write and not self._write_turn.acquire(timeout=BUSY_SECONDS):
            raise BackendError(f"database busy: no write turn within {BUSY_SECONDS} s")
        try:
            conn = self._conn()
            cur = conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield cur
                    cur.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (a full disk, an I/O error):
                    # the error to report is the first one, and the connection is left
                    # outside any transaction for this thread's next one
                    with suppress(sqlite3.Error):
                        cur.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise BackendError(f"database error: {e}") from e
            finally:
                cur.close()
        finally:
            if write:
                self._write_turn.release()

    def full(self) -> SqlCatalog:
        """The ``SqlCatalog`` of the same database, for what this class does not answer."""
        with self._conns_lock:
            return self._full_catalog()

    def _full_catalog(self) -> SqlCatalog:
        if self._full is None:
            try:
                from lamina.db.catalog import SqlCatalog
                from lamina.db.engine import make_engine
            except ModuleNotFoundError as e:  # installed without the "server" extra
                raise UsageError(
                    f"this step needs the server's libraries ({e.name} is missing): "
                    "pip install 'lamina[server]'"
                ) from e
            self._full = SqlCatalog(make_engine(self._loc.database))
        return self._full

    # --- what a backup asks ---------------------------------------------------
    def missing(self, ids: Collection[bytes], kind: BlobKind | None = None) -> set[bytes]:
        wanted = set(ids)
        if not wanted:
            return set()
        found: set[bytes] = set()
        with self._tx() as cur:
            for batch in batches(wanted):
                sql = SQLITE_MISSING % marks(len(batch))
                args: tuple[object, ...] = tuple(batch)
                if kind is not None:
                    sql += " AND kind = ?"
                    args += (int(kind),)
                found.update(bytes(r[0]) for r in cur.execute(sql, args))
        return wanted - found

    def known_ids(self, kind: BlobKind, limit: int) -> set[bytes] | None:
        with self._tx() as cur:
            # Counting first keeps a refusal cheap (an index scan, no rows to Python).
            (count,) = cur.execute(
                "SELECT count(*) FROM blobs WHERE kind = ? AND condemned = 0", (int(kind),)
            ).fetchone()
            if count > limit:
                return None
            rows = cur.execute(SQLITE_KNOWN, (int(kind), limit + 1)).fetchall()
        if len(rows) > limit:
            return None
        return {bytes(r[0]) for r in rows}

    def begin_pack(self, name: str) -> None:
        with self._tx(write=True) as cur:
            if cur.execute("SELECT seq FROM packs WHERE name = ?", (name,)).fetchone() is None:
                cur.execute(
                    "INSERT INTO packs (name, size, state, created) VALUES (?, 0, ?, ?)",
                    (name, PACK_WRITING, _stamp(dt.datetime.now(dt.UTC))),
                )

    def commit_pack(self, name: str, size: int, entries: Sequence[PackEntry]) -> None:
        with self._tx(write=True) as cur:
            row = cur.execute(
                "SELECT seq FROM packs WHERE name = ? AND state IN (?, ?)",
                (name, PACK_WRITING, PACK_OK),
            ).fetchone()
            if row is None:
                raise StoreBusyError(pack_taken(name))  # (a gc took it as an orphan)
            seq = row[0]  # (BEGIN IMMEDIATE: no gc's claim between the read and the update)
            cur.execute("UPDATE packs SET size = ?, state = ? WHERE seq = ?", (size, PACK_OK, seq))
            cur.execute("DELETE FROM blobs WHERE pack_seq = ?", (seq,))
            cur.executemany(
                SQLITE_INSERT,
                [
                    (e.id, seq, int(e.kind), e.offset, e.length, e.raw_length)
                    for e in one_entry_per_id(entries)
                ],
            )

    def gc_epoch(self) -> int:
        with self._tx() as cur:
            row = cur.execute(
                "SELECT value FROM store_state WHERE key = ?", (EPOCH_KEY,)
            ).fetchone()
        return int(row[0]) if row is not None and row[0] else 0

    def rescue(self, ids: Collection[bytes]) -> set[bytes]:
        wanted = set(ids)
        found: set[bytes] = set()
        with self._tx(write=True) as cur:
            for batch in batches(wanted):
                m = marks(len(batch))
                cur.execute(_RESCUE % m, batch)
                found.update(bytes(r[0]) for r in cur.execute(_HELD % m, batch))
        return wanted - found

    def add_snapshot(self, record: SnapshotRecord, expected_epoch: int) -> bool:
        with self._tx(write=True) as cur:
            row = cur.execute(
                "SELECT value FROM store_state WHERE key = ?", (EPOCH_KEY,)
            ).fetchone()
            if row is None:
                raise NotFoundError(
                    "the store's database is not initialised (run `lamina store init`)"
                )
            if int(row[0]) != expected_epoch:
                return False
            if cur.execute("SELECT seq FROM snapshots WHERE id = ?", (record.id,)).fetchone():
                return True  # the same snapshot committed twice (a retried commit): idempotent
            cur.execute(
                "INSERT INTO snapshots (id, time, source, root, files, bytes, meta) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    _stamp(record.time),
                    record.source,
                    record.root,
                    record.files,
                    record.bytes,
                    json.dumps(record.meta),
                ),
            )
            return True

    def snapshots(self, source: str | None = None) -> list[SnapshotRecord]:
        with self._tx() as cur:
            return snapshots_of(cur.connection, source)

    def server_managed(self) -> bool:
        """``lamina.db.stores.server_managed``: a Lamina server made users here."""
        with self._tx() as cur:
            return bool(cur.execute("SELECT count(*) FROM users").fetchone()[0])

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        if self._full is not None:
            self._full.close()

    # --- everything else: SqlCatalog ------------------------------------------
    def locate(
        self, ids: Collection[bytes], include_condemned: bool = False, kind: BlobKind | None = None
    ) -> dict[bytes, BlobLocation]:
        # a backup reads trees back when its commit meets a gc (``walk_blobs``): answered
        # here, so that step needs no SQLAlchemy either
        out: dict[bytes, BlobLocation] = {}
        with self._tx() as cur:
            for batch in batches(set(ids)):
                sql, args = locate_query(
                    batch, include_condemned, None if kind is None else int(kind)
                )
                for r in cur.execute(sql, args):
                    out[bytes(r[0])] = BlobLocation(r[1], r[2], r[3], r[4], KINDS[r[5]])
        return out

    def iter_blobs(self) -> Iterator[BlobRow]:
        return self.full().iter_blobs()

    def pack_blobs(self, pack: str) -> list[BlobRow]:
        return self.full().pack_blobs(pack)

    def packs(self) -> list[PackInfo]:
        return self.full().packs()

    def max_pack_seq(self) -> int:
        return self.full().max_pack_seq()

    def drop_pack(self, name: str) -> None:
        self.full().drop_pack(name)

    def finish_repack(self, old: str, moved: Collection[bytes]) -> bool:
        return self.full().finish_repack(old, moved)

    def replace_index(self, packs: Iterable[tuple[str, int, Sequence[PackEntry]]]) -> None:
        self.full().replace_index(packs)

    def claim_orphan(self, name: str) -> bool:
        return self.full().claim_orphan(name)

    def condemn(
        self,
        ids: Collection[bytes],
        max_pack_seq: int,
        copies: Collection[tuple[bytes, int]] = (),
        settled: Callable[[], bool] | None = None,
        also: Callable[[Any], None] | None = None,
    ) -> int:
        return self.full().condemn(ids, max_pack_seq, copies, settled, also)

    def try_lock(self, name: str, holder: str, ttl: dt.timedelta) -> bool:
        return self.full().try_lock(name, holder, ttl)

    def renew_lock(self, name: str, holder: str, ttl: dt.timedelta) -> bool:
        return self.full().renew_lock(name, holder, ttl)

    def unlock(self, name: str, holder: str) -> None:
        self.full().unlock(name, holder)

    def lock_info(self, name: str) -> tuple[str, dt.datetime] | None:
        return self.full().lock_info(name)

    def snapshots_since(self, seq: int) -> list[tuple[int, SnapshotRecord]]:
        return self.full().snapshots_since(seq)

    def last_snapshot_seq(self) -> int:
        return self.full().last_snapshot_seq()

    def find_snapshot(self, ref: str) -> SnapshotRecord:
        # a restore's first question: answered here, so a restore needs no SQLAlchemy
        return find_in(self.snapshots(), ref)

    def forget_snapshots(self, ids: Collection[str]) -> int:
        return self.full().forget_snapshots(ids)
