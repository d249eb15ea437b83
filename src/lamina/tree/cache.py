"""The files cache: (directory, name) -> (inode, size, mtime, ctime, chunk ids, xattrs),
and directory -> (signature of its listing, its sub-folders' tree ids, its tree id).

A rescan trusts a file whose inode, size, mtime and ctime match its cache entry
and reads none of its content, nor lists its extended attributes (setting or
removing one moves the ctime). Consistency rules:

- New entries go to a ``pending`` table during a scan and move into ``files``
  only by ``commit`` (one transaction), which the caller runs after the snapshot
  is committed. A crash mid-scan leaves the cache as of the last snapshot. A row
  that still holds (a file not read again) is not written again: only the names a
  scan found gone, changed or unreadable are dropped (``drop``), so a folder with
  one changed file among thousands costs one row, not thousands. The batched
  rows are written by one thread on a connection of its own, beside the walk
  (``_flush``); ``settle`` waits for them and raises a write that failed, and
  ``commit`` settles first.
- The cache records the store's gc epoch at its last commit. If the store's
  epoch has moved since, chunks it names may have been collected, so callers must
  verify cached chunk ids before trusting them (``stale``).
- A folder's row (``dirs``) lets a scan reuse its tree id without building,
  encoding, hashing or asking about the tree again, when the listing's signature
  (each kept entry's name, inode, size, mtime, ctime, mode, owner, link count) and
  the sub-folders' tree ids are what the row holds (``tree.scan_reuse``).
- A built tree's entries other than folders (``dir_entries``, keyed by tree id: each
  one's signature row and encoded bytes) let a folder built again take the unchanged
  ones as they are (``tree.scan_entries``). They are written beside the walk, reached
  only through a committed folder row, and a commit deletes those no row names.
- A commit under another epoch than the rows were last confirmed under drops the
  rows (files and folders) of folders this scan did not visit: nobody verified them, the snapshot
  did not keep their chunks alive, and a folder moved away and back (or
  excluded, then included) keeps its files' inode, size, mtime and ctime.

A local SQLite file (stdlib ``sqlite3``): it belongs to one writer, never to the
server's database.
"""

from __future__ import annotations

import os
import sqlite3
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import blake3
import msgpack

#: 2: ``content`` holds ``[chunk ids, xattrs]`` (1 held the chunk ids alone).
#: 3: the ``dirs`` table (a folder's listing signature and tree id). A cache of
#: version 2 keeps its files and starts with no folder rows; one of any other
#: version is emptied, never read.
#: 4: a folder row also holds its entries' encoded bytes (``entries``): a cache of
#: version 2 or 3 keeps its files and starts with no folder rows.
SCHEMA_VERSION = 4
#: The versions whose ``files`` rows version 4 reads as they are.
_FILES_COMPATIBLE = ("2", "3", "4")
ID_SIZE = 32
#: Batches of rows written or queued beside the walk before ``_flush`` waits for the
#: oldest: the rows held in memory stay bounded (about 2,000 rows a batch).
WRITES_IN_FLIGHT = 2


class CachedFile(NamedTuple):
    """A file's row (a tuple: a rebuilt folder makes one per file it holds)."""

    inode: int
    size: int
    mtime: int
    ctime: int
    content: list[bytes | int]
    xattrs: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class CachedDir:
    """What the last committed scan found in a folder: the signature of its listing, its
    sub-folders' tree ids joined in name order, and the tree id it wrote."""

    listing: bytes
    subtrees: bytes
    tree: bytes


def rows_signature(rows: Sequence[tuple[Any, ...]]) -> bytes:
    """The signature of a folder's listing, from ``signature_rows`` of the entries the
    scan keeps, in name order."""
    return blake3.blake3(msgpack.packb(rows, use_bin_type=True)).digest()


def signature_rows(
    listing: Iterable[tuple[bytes, os.stat_result, object]],
    user: Mapping[int, str],
    group: Mapping[int, str],
) -> list[tuple[Any, ...]]:
    """Each entry's row of a listing's signature (``rows_signature``), from its ``(name,
    lstat, ...)`` and the names of its owner and group (``user``, ``group``: by id). Whatever
    a tree entry holds either is in it (name, mode, owner and their names, size, mtime,
    device number, the inode and device a hard-link key is made of) or moves the ctime when
    it changes (content, xattrs, link count, a symlink's target: a new inode). One pass
    over the listing: an unchanged folder's check makes no other tuple per entry."""
    return [
        (
            name,
            st.st_mode,
            st.st_ino,
            st.st_dev,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            user[st.st_uid],
            group[st.st_gid],
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_rdev,
        )
        for name, st, _ in listing
    ]


def pack_entries(rows: Sequence[tuple[Any, ...]], encoded: Sequence[bytes]) -> bytes:
    """A folder row's ``entries``: the signature rows of its entries other than folders and
    their encoded bytes, behind the blob's digest."""
    body = msgpack.packb([rows, encoded], use_bin_type=True)
    return blake3.blake3(body).digest() + body


def _dir_row(row: tuple[object, object, object] | None) -> CachedDir | None:
    """A folder row as written, or None for a row that is not (never half-trusted)."""
    if row is None:
        return None
    listing, subtrees, tree = row
    if not (
        isinstance(listing, bytes)
        and isinstance(subtrees, bytes)
        and isinstance(tree, bytes)
        and len(listing) == ID_SIZE
        and len(tree) == ID_SIZE
        and len(subtrees) % ID_SIZE == 0
    ):
        return None
    return CachedDir(listing, subtrees, tree)


def _decode(blob: bytes) -> tuple[list[bytes | int], list[tuple[bytes, bytes]]]:
    content, xattrs = msgpack.unpackb(blob)
    return content, [(k, v) for k, v in xattrs]


def _write_rows(db: sqlite3.Connection, batches: list[tuple[str, list[Any]]]) -> None:
    """Insert the batches of rows in one transaction."""
    db.execute("BEGIN")
    try:
        for sql, rows in batches:
            if rows:
                db.executemany(sql, rows)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class FilesCache:
    def __init__(self, path: Path, store_id: str, epoch: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("version") != str(SCHEMA_VERSION):
            # Folder rows of another version (another shape, or older than the files
            # rows after a downgrade and this upgrade) go; ``files`` is judged below.
            self._db.executescript(
                "DROP TABLE IF EXISTS dirs; DROP TABLE IF EXISTS pending_dirs;"
                " DROP TABLE IF EXISTS dir_entries;"
            )
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS files (
                dir BLOB NOT NULL, name BLOB NOT NULL, inode INTEGER, size INTEGER,
                mtime INTEGER, ctime INTEGER, content BLOB, PRIMARY KEY (dir, name));
            CREATE TABLE IF NOT EXISTS pending (
                dir BLOB NOT NULL, name BLOB NOT NULL, inode INTEGER, size INTEGER,
                mtime INTEGER, ctime INTEGER, content BLOB, PRIMARY KEY (dir, name));
            CREATE TABLE IF NOT EXISTS dirs (
                dir BLOB PRIMARY KEY, listing BLOB, subtrees BLOB, tree BLOB);
            CREATE TABLE IF NOT EXISTS pending_dirs (
                dir BLOB PRIMARY KEY, listing BLOB, subtrees BLOB, tree BLOB);
            CREATE TABLE IF NOT EXISTS dir_entries (tree BLOB PRIMARY KEY, entries BLOB);
            CREATE TABLE IF NOT EXISTS dropped (
                dir BLOB NOT NULL, name BLOB NOT NULL, PRIMARY KEY (dir, name));
            CREATE TABLE IF NOT EXISTS visited (dir BLOB PRIMARY KEY);
            DELETE FROM pending;
            DELETE FROM pending_dirs;
            DELETE FROM dropped;
            DELETE FROM visited;
            """
        )
        if (
            meta.get("store_id") not in (None, store_id)
            or meta.get("version") not in _FILES_COMPATIBLE
        ):
            self._db.executescript(
                "DELETE FROM files; DELETE FROM dirs; DELETE FROM dir_entries; DELETE FROM meta;"
            )
            meta = {}
        self.stale = meta.get("epoch") != str(epoch)
        self._confirmed_epoch = meta.get("epoch")
        self._store_id = store_id
        self._batch: list[tuple[bytes, bytes, int, int, int, int, bytes]] = []
        self._visited: list[tuple[bytes]] = []
        self._dropped: list[tuple[bytes, bytes]] = []
        self._dirs: list[tuple[bytes, bytes | None, bytes | None, bytes | None]] = []
        self._entries: list[tuple[bytes, bytes]] = []
        #: ``put``'s packer, one for the cache (``put``, like ``_batch``, is the walk's
        #: alone), not a new one per file as ``msgpack.packb`` makes
        self._pack = msgpack.Packer(use_bin_type=True).pack
        #: The batched rows are written by one thread on its own connection, beside the
        #: walk: SQLite's B-tree work runs without the GIL there (a scan that reads
        #: every file queues a row per file). ``commit`` and ``close`` wait for it first.
        self._writer: ThreadPoolExecutor | None = None
        self._writer_db: sqlite3.Connection | None = None
        self._writes: deque[Future[None]] = deque()

    def folder(self, dirpath: bytes) -> CachedDir | None:
        """The folder's row, if a well-formed one is held; also records that this scan
        visited the folder."""
        self._visit(dirpath)
        row = self._db.execute(
            "SELECT listing, subtrees, tree FROM dirs WHERE dir = ?", (dirpath,)
        ).fetchone()
        return _dir_row(row)

    def folder_entries(self, dirpath: bytes) -> dict[bytes, tuple[tuple[Any, ...], bytes]] | None:
        """The folder row's entries other than folders: name -> (the entry's row of the
        listing's signature, its encoded bytes in the row's tree); None if the row holds
        none or a damaged blob (checked against its digest: never half-trusted)."""
        row = self._db.execute(
            "SELECT CAST(e.entries AS BLOB) FROM dirs AS d JOIN dir_entries AS e"
            " ON e.tree = d.tree WHERE d.dir = ?",
            (dirpath,),
        ).fetchone()
        blob = row[0] if row is not None else None
        if not isinstance(blob, bytes) or blake3.blake3(blob[ID_SIZE:]).digest() != blob[:ID_SIZE]:
            return None
        rows, encoded = msgpack.unpackb(blob[ID_SIZE:], use_list=False)
        return {r[0]: (r, b) for r, b in zip(rows, encoded, strict=True)}

    def put_folder(
        self, dirpath: bytes, row: CachedDir | None, entries: bytes | None = None
    ) -> None:
        """Replace the folder's row at ``commit`` (None: drop it, the folder's tree is not
        to be reused as it is). ``entries`` is ``pack_entries``' blob, or None."""
        if row is None:
            self._dirs.append((dirpath, None, None, None))
        else:
            self._dirs.append((dirpath, row.listing, row.subtrees, row.tree))
            if entries is not None:
                self._entries.append((row.tree, entries))
        if len(self._dirs) >= 2000:
            self._flush()

    def _visit(self, dirpath: bytes) -> None:
        self._visited.append((dirpath,))
        if len(self._visited) >= 2000:
            self._flush()

    def directory(self, dirpath: bytes) -> dict[bytes, CachedFile]:
        """The cached files of a folder; also records that this scan visited it."""
        self._visit(dirpath)
        return self.files(dirpath)

    def files_named(self, dirpath: bytes, names: Collection[bytes]) -> dict[bytes, CachedFile]:
        """The cached rows of these files of a folder (those it holds)."""
        out = {}
        for name in names:
            r = self._db.execute(
                "SELECT inode, size, mtime, ctime, content FROM files WHERE dir = ? AND name = ?",
                (dirpath, name),
            ).fetchone()
            if r is not None:
                out[name] = CachedFile(r[0], r[1], r[2], r[3], *_decode(r[4]))
        return out

    def files(self, dirpath: bytes) -> dict[bytes, CachedFile]:
        """The cached files of a folder."""
        rows = self._db.execute(
            "SELECT name, inode, size, mtime, ctime, content FROM files WHERE dir = ?",
            (dirpath,),
        ).fetchall()
        return {bytes(r[0]): CachedFile(r[1], r[2], r[3], r[4], *_decode(r[5])) for r in rows}

    def put(
        self,
        dirpath: bytes,
        name: bytes,
        st: os.stat_result,
        content: list[bytes | int],
        xattrs: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self._batch.append(
            (
                dirpath,
                name,
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                self._pack([content, xattrs]),
            )
        )
        if len(self._batch) >= 2000:
            self._flush()

    def drop(self, dirpath: bytes, names: Collection[bytes]) -> None:
        """Drop these files' rows at ``commit`` (gone from the folder, no longer regular
        files, changed and not read again, or unreadable); the folder's other rows stay."""
        self._dropped.extend((dirpath, n) for n in names)
        if len(self._dropped) >= 2000:
            self._flush()

    def _flush(self, wait: bool = False) -> None:
        """Hand the batched rows to the writing thread (one transaction); a write that
        failed raises here or in ``settle``. With ``wait`` and no thread started yet
        (a scan of few rows: a ~1% change's), they are written here, on ``_db``."""
        batches: list[tuple[str, list[Any]]] = [
            ("INSERT OR IGNORE INTO visited VALUES (?)", self._visited),
            ("INSERT OR IGNORE INTO dropped VALUES (?, ?)", self._dropped),
            ("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, ?, ?)", self._batch),
            ("INSERT OR REPLACE INTO pending_dirs VALUES (?, ?, ?, ?)", self._dirs),
            ("INSERT OR IGNORE INTO dir_entries VALUES (?, ?)", self._entries),
        ]
        if not any(rows for _, rows in batches):
            return
        self._visited, self._dropped, self._batch, self._dirs = [], [], [], []
        self._entries = []
        if wait and self._writer is None:
            _write_rows(self._db, batches)
            return
        while len(self._writes) >= WRITES_IN_FLIGHT:
            self._writes.popleft().result()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="files-cache")
        self._writes.append(self._writer.submit(self._write, batches))

    def _write(self, batches: list[tuple[str, list[Any]]]) -> None:
        """The writing thread's part of ``_flush``, on the thread's own connection."""
        db = self._writer_db
        if db is None:
            db = self._writer_db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA synchronous=NORMAL")  # per connection, as ``__init__``'s
        _write_rows(db, batches)

    def settle(self) -> None:
        """Write every row batched so far and wait for it; raise the first write that
        failed. Call before committing a snapshot, so that a cache that cannot be
        written fails the backup as it did when the walk wrote its rows itself."""
        self._flush(wait=True)
        while self._writes:
            self._writes.popleft().result()

    def commit(self, epoch: int) -> None:
        """Promote this scan's entries; call only after the snapshot is committed."""
        self.settle()
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM files WHERE (dir, name) IN (SELECT dir, name FROM dropped)")
        if str(epoch) != self._confirmed_epoch:
            self._db.execute("DELETE FROM files WHERE dir NOT IN (SELECT dir FROM visited)")
            self._db.execute("DELETE FROM dirs WHERE dir NOT IN (SELECT dir FROM visited)")
        self._db.execute("INSERT OR REPLACE INTO files SELECT * FROM pending")
        self._db.execute("DELETE FROM dirs WHERE dir IN (SELECT dir FROM pending_dirs)")
        self._db.execute("INSERT INTO dirs SELECT * FROM pending_dirs WHERE tree IS NOT NULL")
        self._db.execute("DELETE FROM dir_entries WHERE tree NOT IN (SELECT tree FROM dirs)")
        self._db.execute("DELETE FROM pending")
        self._db.execute("DELETE FROM pending_dirs")
        self._db.execute("DELETE FROM dropped")
        self._db.execute("DELETE FROM visited")
        for k, v in (
            ("store_id", self._store_id),
            ("epoch", str(epoch)),
            ("version", str(SCHEMA_VERSION)),
        ):
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
        self._db.execute("COMMIT")
        self.stale = False
        self._confirmed_epoch = str(epoch)

    def close(self) -> None:
        """Stop the writing thread (its queued writes end first) and close both
        connections; rows not committed stay out of ``files``, as after a crash."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writes.clear()
        if self._writer_db is not None:
            self._writer_db.close()
        self._db.close()
