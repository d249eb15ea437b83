"""What every connection to a Lamina SQLite database is set to: the server's, through
SQLAlchemy (``db.engine``), and a local store's catalog, through the standard library's
``sqlite3`` (``db.sqlite_catalog``: a backup or restore loads no SQLAlchemy). One list,
so that a pragma added for one is there for the other."""

from __future__ import annotations

import sqlite3

#: Seconds a transaction waits for the database (SQLite's lock, a pooled connection).
BUSY_SECONDS = 60
#: Pages of write-ahead log after which a commit copies it back into the database
#: (``PRAGMA wal_autocheckpoint``; SQLite's default is 1,000, 4 MB). A sync's bundles each
#: rewrite most pages of the catalog's and the ownership's b-trees (sorted inserts of random
#: ids), so a log of 1,000 pages was copied back every few bundles, the same pages each
#: time; at 10,000 (40 MB) a page rewritten by many transactions is copied once. 300,000
#: rows in transactions of 500: 19.5 s with 6.2 s of system CPU at 1,000 pages and a 4 MiB
#: limit, 13.5 s and 4.1 s here ("SQLite's log (session 26)" in docs/design.md).
CHECKPOINT_PAGES = 10_000
#: Bytes a SQLite database's write-ahead log is cut back to when it starts over after a
#: checkpoint (``PRAGMA journal_size_limit``): a little more than the ~40 MB it checkpoints
#: at, so a log that reaches the checkpoint keeps its file (cutting it and growing it again
#: at every checkpoint cost a third of the system CPU above), while one a single huge
#: transaction grew is cut back. The server cuts it to nothing when the last sync in
#: flight ends (``db.engine.truncate_log``). Only the file's length: what is committed and
#: when it is synced do not change.
WAL_LIMIT = 48 * 1024 * 1024
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    f"PRAGMA journal_size_limit={WAL_LIMIT}",
    f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}",
)


def tune(cursor: sqlite3.Cursor | sqlite3.Connection) -> None:
    """Run ``PRAGMAS`` on a new connection (or a cursor of one)."""
    for pragma in PRAGMAS:
        cursor.execute(pragma)
