"""What SQLite's log settings cost a sync-like stream of transactions.

``python -m bench.sqlite_wal [--rows N] [--per N]`` inserts ``--rows`` random 32-byte ids,
sorted, ``--per`` a transaction, into a catalog-like and an ownership-like table (both
keyed by the id, as a sync's bundles write them) under ``synchronous=FULL``, once per
setting of ``wal_autocheckpoint`` (pages) and ``journal_size_limit`` (bytes), in a fresh
database each, and prints wall time, user and system CPU and the log's file size at the
end. Lamina's own setting is ``db.sqlite_pragmas`` (docs/design.md, "SQLite's log
(session 26)").
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lamina.db.sqlite_pragmas import CHECKPOINT_PAGES, WAL_LIMIT

#: (checkpoint pages, log file limit in bytes; -1 none)
SETTINGS = (
    (1000, 4 * 1024 * 1024),
    (CHECKPOINT_PAGES, 4 * 1024 * 1024),
    (CHECKPOINT_PAGES, WAL_LIMIT),
    (CHECKPOINT_PAGES, -1),
)


def run(folder: Path, pages: int, limit: int, rows: int, per: int) -> str:
    path = folder / f"wal-{pages}-{limit}.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in (
        "journal_mode=WAL",
        "synchronous=FULL",
        f"journal_size_limit={limit}",
        f"wal_autocheckpoint={pages}",
    ):
        db.execute("PRAGMA " + pragma)
    db.execute("CREATE TABLE blobs (id BLOB, pack INTEGER, len INTEGER, PRIMARY KEY (id, pack))")
    db.execute("CREATE TABLE own (cvd INTEGER, id BLOB, PRIMARY KEY (cvd, id)) WITHOUT ROWID")
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for t in range(rows // per):
        ids = sorted(os.urandom(32) for _ in range(per))
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO blobs VALUES (?, ?, 100)", [(i, t) for i in ids])
        db.executemany("INSERT INTO own VALUES (1, ?)", [(i,) for i in ids])
        db.execute("COMMIT")
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
    log = os.path.getsize(f"{path}-wal") / 1e6
    db.close()
    cut = f"{limit / 2**20:5.0f} MiB" if limit >= 0 else " none    "
    return (
        f"checkpoint {pages:6d} pages  limit {cut}  wall {wall:6.2f} s  "
        f"user {after.ru_utime - before.ru_utime:5.2f} s  "
        f"system {after.ru_stime - before.ru_stime:5.2f} s  log {log:5.1f} MB"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--per", type=int, default=500, help="rows a transaction")
    parser.add_argument(
        "--dir", type=Path, help="where the databases go (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for pages, limit in SETTINGS:
            print(run(Path(tmp), pages, limit, args.rows, args.per), flush=True)


if __name__ == "__main__":
    main()
