"""What every connection to a Lamina SQLite database is set to: the server's, through
SQLAlchemy (``db.engine``), and a local store's catalog, through the standard library's
``sqlite3`` (``db.sqlite_catalog``: a backup or restore loads no SQLAlchemy). One list,
so that a pragma added for one is there for the other."""

from __future__ import annotations

import sqlite3

#: Seconds a transaction waits for the database (SQLite's lock, a pooled connection).
BUSY_SECONDS = 60
#: Bytes a SQLite database's write-ahead log is cut back to when it starts over after a
#: checkpoint (``PRAGMA journal_size_limit``): a sync's large transactions grew it to 17 MB
#: and it stayed that size on disk. The size SQLite checkpoints at (1,000 pages), so a log
#: that never grows past it is never cut. Only the file's length: what is committed and
#: when it is synced do not change.
WAL_LIMIT = 4 * 1024 * 1024
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    f"PRAGMA journal_size_limit={WAL_LIMIT}",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}",
)


def tune(cursor: sqlite3.Cursor | sqlite3.Connection) -> None:
    """Run ``PRAGMAS`` on a new connection (or a cursor of one)."""
    for pragma in PRAGMAS:
        cursor.execute(pragma)
