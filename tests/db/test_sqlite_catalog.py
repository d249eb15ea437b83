"""``lamina.db.sqlite_catalog``: the embedded catalog through the standard library's
``sqlite3`` answers as ``SqlCatalog`` does (the catalog tests of ``test_catalog.py`` run
again on it), writes rows ``SqlCatalog`` reads back the same, and opens only a database
it can vouch for (anything else is left to the usual way, which migrates and binds)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina.db.catalog import SqlCatalog
from lamina.db.engine import make_engine
from lamina.db.location import StoreLocation
from lamina.db.migrate import upgrade
from lamina.db.sqlite_catalog import SqliteCatalog, open_embedded
from lamina.db.sqlite_pragmas import BUSY_SECONDS, CHECKPOINT_PAGES, WAL_LIMIT
from lamina.db.sqlite_read import bound_connection
from lamina.db.stores import init_store, open_store
from lamina.errors import NotFoundError, StoreKeyError
from lamina.store.blob import BlobKind
from lamina.store.catalog import PACK_OK
from tests.db import test_catalog
from tests.db.test_catalog import STORE, T0, bid, entries, pack, snap

# These catalog tests of test_catalog.py run here again, on ``SqliteCatalog`` (this
# module's ``catalog`` fixture); the others there are about SQLAlchemy or the migrations.
for _name in (
    "test_add_snapshot_refuses_a_stale_epoch",
    "test_commit_pack_missing_and_locate",
    "test_condemn_bumps_the_epoch_and_hides_rows",
    "test_drop_pack_and_replace_index",
    "test_find_snapshot",
    "test_finish_repack",
    "test_known_ids_of_a_kind_without_condemned_rows_or_none_above_the_limit",
    "test_latest_breaks_time_ties_by_insertion",
    "test_many_ids_are_batched",
    "test_missing_and_locate_by_kind",
    "test_rescue_uncondemns_and_reports_swept_ids",
    "test_snapshot_listing_by_source_position_and_forget",
    "test_snapshot_rows_round_trip",
    "test_snapshot_time_keeps_its_instant_whatever_the_offset",
    "test_try_lock_and_unlock",
):
    globals()[_name] = getattr(test_catalog, _name)


def committed(cat: Any, name: str, size: int, ents: Any) -> None:
    """A pack as a writer stores it: begun (``writing``), then committed."""
    cat.begin_pack(name)
    cat.commit_pack(name, size, ents)


def _bound_sql(path: Path) -> SqlCatalog:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    cat = SqlCatalog(engine)
    cat.bind_store(STORE)
    return cat


def _stdlib(path: Path) -> SqliteCatalog:
    first = bound_connection(path, STORE, check_same_thread=False)
    assert first is not None
    return SqliteCatalog(path, StoreLocation(data=path.parent), first)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqliteCatalog]:
    """A ``SqliteCatalog`` on a migrated SQLite database bound to ``STORE``."""
    path = tmp_path / "lamina.db"
    _bound_sql(path).close()
    cat = _stdlib(path)
    yield cat
    cat.close()


def test_what_it_writes_sql_catalog_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "lamina.db"
    sql = _bound_sql(path)
    lite = _stdlib(path)
    try:
        east = dt.timezone(dt.timedelta(hours=2))
        recs = [
            snap("a1" * 32, T0.astimezone(east), note="x", nested={"k": [1, 2]}),
            snap("a2" * 32, T0.replace(microsecond=0) + dt.timedelta(seconds=1), "other:/x"),
        ]
        assert lite.add_snapshot(recs[1], 0) and lite.add_snapshot(recs[0], 0)
        sql.add_snapshot(snap("a3" * 32, T0 + dt.timedelta(seconds=1)), 0)
        lite.begin_pack(pack(1))
        committed(lite, pack(1), 4000, entries(bid(1), bid(2)))
        committed(lite, pack(2), 5000, entries(bid(3), kind=BlobKind.TREE))

        # Rows from either side sort and read back alike (times as SQLAlchemy stores them).
        assert sql.snapshots() == lite.snapshots()
        assert [s.id for s in sql.snapshots()] == ["a1" * 32, "a2" * 32, "a3" * 32]
        assert sql.snapshots()[0] == recs[0]
        assert sql.snapshots("other:/x") == [recs[1]]
        assert [(p.name, p.size, p.state) for p in sql.packs()] == [
            (pack(1), 4000, PACK_OK),
            (pack(2), 5000, PACK_OK),
        ]
        assert all(p.created.tzinfo is not None for p in sql.packs())
        assert set(sql.locate([bid(1), bid(2), bid(3)])) == {bid(1), bid(2), bid(3)}
        assert sql.missing([bid(3)], kind=BlobKind.TREE) == set()
        # ... and what SqlCatalog condemns, this one no longer counts as held.
        epoch = sql.condemn([bid(1)], sql.max_pack_seq())
        assert lite.gc_epoch() == epoch == 1
        assert lite.missing([bid(1), bid(2)]) == {bid(1)}
        assert lite.known_ids(BlobKind.DATA, 10) == {bid(2)}
    finally:
        lite.close()
        sql.close()


def test_writers_of_several_threads_take_turns(catalog: SqliteCatalog) -> None:
    import threading

    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for k in range(10):
                committed(catalog, pack(100 * n + k), 10, entries(bid(100 * n + k)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    wanted = {bid(100 * n + k) for n in range(1, 5) for k in range(10)}
    assert catalog.missing(wanted) == set()


def test_opens_only_a_migrated_store_it_indexes(tmp_path: Path) -> None:
    loc = StoreLocation(data=tmp_path / "data")
    assert open_embedded(loc, 1 << 20) is None  # nothing there: the usual way says what
    init_store(loc).close()
    (loc.data / "lamina.db").rename(loc.data / "elsewhere.db")
    assert open_embedded(loc, 1 << 20) is None  # no database: the usual way makes it
    (loc.data / "elsewhere.db").rename(loc.data / "lamina.db")
    keys = loc.keys_path.read_bytes()
    loc.keys_path.unlink()
    with pytest.raises(NotFoundError, match="no key file"):  # as the usual way says it
        open_embedded(loc, 1 << 20)
    loc.keys_path.write_bytes(keys)
    store = open_embedded(loc, 1 << 20)
    assert store is not None and isinstance(store.catalog, SqliteCatalog)
    assert not store.catalog.server_managed()
    store.close()
    # A database left at an older revision is migrated the usual way first.
    with sqlite3.connect(loc.data / "lamina.db") as c:
        c.execute("UPDATE alembic_version SET version_num = '0009_inflight'")
    assert open_embedded(loc, 1 << 20) is None
    # A scale-out store (--db) is never opened here.
    assert open_embedded(StoreLocation(data=loc.data, db_url="sqlite:///x.db"), 1 << 20) is None


def test_refuses_a_database_of_another_store(tmp_path: Path) -> None:
    one, two = StoreLocation(data=tmp_path / "one"), StoreLocation(data=tmp_path / "two")
    init_store(one).close()
    init_store(two).close()
    (two.data / "lamina.db").unlink()
    (one.data / "lamina.db").rename(two.data / "lamina.db")
    with pytest.raises(StoreKeyError, match="indexes store"):
        open_embedded(two, 1 << 20)
    with pytest.raises(StoreKeyError, match="indexes store"):
        open_store(two)


def test_locate_is_answered_without_sqlalchemys_catalog(catalog: SqliteCatalog) -> None:
    # a backup whose commit meets a gc reads its trees back (``walk_blobs``): without
    # the server extra that must not need SqlCatalog
    catalog.begin_pack(pack(1))
    committed(catalog, pack(1), 4000, entries(bid(1), bid(2)))
    got = catalog.locate([bid(1), bid(2), bid(3)])
    assert set(got) == {bid(1), bid(2)} and got[bid(1)].pack == pack(1)
    assert catalog.locate([bid(1)], kind=BlobKind.TREE) == {}
    assert catalog._full is None


def test_find_snapshot_is_answered_without_sqlalchemys_catalog(catalog: SqliteCatalog) -> None:
    # a restore's first question (``lamina snapshot restore`` opens the store this way)
    older, newer = snap("b1" * 32, T0), snap("c2" * 32, T0 + dt.timedelta(seconds=1))
    assert catalog.add_snapshot(newer, 0) and catalog.add_snapshot(older, 0)
    assert catalog.find_snapshot("latest") == newer
    assert catalog.find_snapshot("B1B1") == older
    with pytest.raises(NotFoundError):
        catalog.find_snapshot("dddd")
    assert catalog._full is None


def test_the_first_error_is_the_one_reported_and_the_next_transaction_works(
    catalog: SqliteCatalog,
) -> None:
    # SQLite can end a transaction itself (a full disk, an I/O error): the ROLLBACK that
    # follows must not replace the error, nor leave this thread's connection in a transaction
    with pytest.raises(ValueError, match="the first error"), catalog._tx(write=True) as cur:
        cur.execute("ROLLBACK")
        raise ValueError("the first error")
    catalog.begin_pack(pack(1))
    committed(catalog, pack(1), 4000, entries(bid(1)))
    assert catalog.missing([bid(1)]) == set()


def test_its_connections_are_set_as_the_servers_engine_sets_its_own(catalog: SqliteCatalog) -> None:
    """One list of pragmas for both (``db.sqlite_pragmas``): the write-ahead log's limit
    and checkpoint size, added for the server, hold for a local backup's catalog too."""
    engine = make_engine(f"sqlite:///{catalog.database}")
    with engine.connect() as c:
        server = [c.exec_driver_sql(f"PRAGMA {p}").scalar() for p in _SET]
    engine.dispose()
    mine = [catalog._conn().execute(f"PRAGMA {p}").fetchone()[0] for p in _SET]
    assert mine == server == ["wal", 2, WAL_LIMIT, CHECKPOINT_PAGES, 1, BUSY_SECONDS * 1000]


_SET = (
    "journal_mode",
    "synchronous",
    "journal_size_limit",
    "wal_autocheckpoint",
    "foreign_keys",
    "busy_timeout",
)
