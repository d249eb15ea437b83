"""The engines under load: a connection for every worker thread, SQLite writers in turn."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

from lamina.db.engine import POOL_OVERFLOW, POOL_SIZE, WAL_LIMIT, make_engine, read_tx, write_tx

#: The server's worker threads (anyio's default thread limiter).
WORKER_THREADS = 40


def test_every_worker_thread_gets_a_connection_at_once(tmp_path: Path) -> None:
    """Forty requests inside a transaction together: none waits for a pooled connection
    (the old pool of 5 + 10 made the sixteenth wait 30 s, then fail with a 500)."""
    assert POOL_SIZE + POOL_OVERFLOW >= WORKER_THREADS
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    inside = threading.Barrier(WORKER_THREADS, timeout=60)

    def one(_: int) -> int:
        with read_tx(engine) as c:
            inside.wait()  # broken (an error) unless all forty are in a transaction at once
            return int(c.execute(text("SELECT 1")).scalar_one())

    try:
        with ThreadPoolExecutor(WORKER_THREADS) as pool:
            assert sum(pool.map(one, range(WORKER_THREADS))) == WORKER_THREADS
    finally:
        engine.dispose()


def test_sqlite_writers_of_a_process_each_commit_once(tmp_path: Path) -> None:
    """Many threads writing at once: every transaction commits exactly once and none
    fails on SQLite's busy timeout."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with write_tx(engine) as c:
            c.execute(text("CREATE TABLE n (i INTEGER)"))

        def one(i: int) -> None:
            with write_tx(engine) as c:
                c.execute(text("INSERT INTO n VALUES (:i)"), {"i": i})

        with ThreadPoolExecutor(WORKER_THREADS) as pool:
            list(pool.map(one, range(200)))
        with read_tx(engine) as c:
            assert c.execute(text("SELECT count(*), count(DISTINCT i) FROM n")).one() == (200, 200)
    finally:
        engine.dispose()


def test_a_large_transactions_write_ahead_log_is_cut_back_once_it_starts_over(
    tmp_path: Path,
) -> None:
    """A transaction larger than ``WAL_LIMIT`` grows SQLite's log past it; the next write
    after the checkpoint starts the log over and cuts the file back to ``WAL_LIMIT`` (it
    stayed at its largest before). Every row is kept."""
    db = tmp_path / "db.sqlite"
    engine = make_engine(f"sqlite:///{db}")
    wal = tmp_path / "db.sqlite-wal"
    rows = WAL_LIMIT // 1000 + 8_000
    try:
        with write_tx(engine) as c:
            c.execute(text("CREATE TABLE t (x BLOB)"))
        with write_tx(engine) as c:
            c.exec_driver_sql("INSERT INTO t VALUES (randomblob(1000))", [()] * rows)
        assert wal.stat().st_size > WAL_LIMIT
        with write_tx(engine) as c:
            c.execute(text("INSERT INTO t VALUES (x'00')"))
        assert wal.stat().st_size <= WAL_LIMIT
        with read_tx(engine) as c:
            assert c.execute(text("SELECT count(*) FROM t")).scalar_one() == rows + 1
    finally:
        engine.dispose()
