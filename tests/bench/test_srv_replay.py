"""``bench.srv_replay``'s statement counts (``replay --statements``)."""

from __future__ import annotations

from pathlib import Path

import blake3
from bench.srv_replay import StatementCpu

from lamina.db.engine import make_engine, read_tx, write_tx
from lamina.db.migrate import upgrade
from lamina.server.services import access


def test_statement_texts_fold_their_lists_of_marks() -> None:
    assert StatementCpu.text("SELECT id FROM t WHERE id IN (?,?, ?) AND k = ?") == (
        "SELECT id FROM t WHERE id IN (?...) AND k = ?"
    )
    assert StatementCpu.text("WITH v(id) AS (VALUES (?), (?),(?)) SELECT 1") == (
        "WITH v(id) AS (VALUES (?)...) SELECT 1"
    )


def test_statements_are_counted_through_the_engine_and_the_driver_until_the_block_ends(
    tmp_path: Path,
) -> None:
    """Statements run through SQLAlchemy (an executemany's rows each) and on the driver's
    cursor (``driver_rows``, which the engine's events do not see) are counted, and the
    commits by kind; nothing is counted, nor wrapped, after the block."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    ids = [blake3.blake3(bytes([i])).digest() for i in range(3)]
    stats = StatementCpu()
    try:
        with stats.installed():
            with write_tx(engine) as c:
                c.exec_driver_sql("CREATE TABLE t (a)")
                c.exec_driver_sql("INSERT INTO t (a) VALUES (?)", [(1,), (2,), (3,)])
            with read_tx(engine) as c:
                assert access.owned(c, "x" * 36, ids) == set()
        with write_tx(engine) as c:
            c.exec_driver_sql("INSERT INTO t (a) VALUES (4)")
    finally:
        engine.dispose()
    assert stats.stats["INSERT INTO t (a) VALUES (?)"][0::2] == [1, 3]
    owned = "SELECT blob_id FROM cvd_blobs WHERE blob_id IN (?...) AND cvd_id = ?"
    assert stats.stats[owned][0] == 1
    assert not any("VALUES (4)" in sql for sql in stats.stats)
    assert stats.commits == {"write": 1, "read": 1}
    assert "in all" in stats.report()
