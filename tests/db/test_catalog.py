"""``SqlCatalog`` and the migrations, on SQLite (a file) and on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, inspect, select

from lamina.db import catalog as catalog_mod
from lamina.db.catalog import SqlCatalog
from lamina.db.engine import make_engine
from lamina.db.migrate import alembic_config, upgrade
from lamina.db.models import metadata, store_state
from lamina.errors import ConflictError, NotFoundError, StoreBusyError, StoreKeyError, UsageError
from lamina.store.blob import BlobKind
from lamina.store.catalog import PACK_OK, PACK_WRITING, BlobLocation, SnapshotRecord
from lamina.store.pack import PackEntry

STORE = "0f7e2c1a-0000-4000-8000-000000000001"


def committed(cat: Any, name: str, size: int, ents: Any) -> None:
    """A pack as a writer stores it: begun (``writing``), then committed."""
    cat.begin_pack(name)
    cat.commit_pack(name, size, ents)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    url: str = request.getfixturevalue("pg_db_url")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the empty database, not migrated."""
    e = make_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture
def catalog(engine: Engine) -> Iterator[SqlCatalog]:
    """A catalog on a migrated database, bound to ``STORE``."""
    upgrade(engine)
    cat = SqlCatalog(engine)
    cat.bind_store(STORE)
    yield cat
    cat.close()


def bid(n: int) -> bytes:
    return n.to_bytes(2, "big") * 16


def entries(*ids: bytes, kind: BlobKind = BlobKind.DATA) -> list[PackEntry]:
    return [PackEntry(kind, i, k * 100, 90, 200) for k, i in enumerate(ids)]


def pack(n: int) -> str:
    return f"{n:064x}"


def snap(sid: str, at: dt.datetime, source: str = "host:/src", **meta: Any) -> SnapshotRecord:
    return SnapshotRecord(
        id=sid, time=at, source=source, root=bytes(32), files=3, bytes=1234, meta=meta
    )


T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


# --- migrations ---------------------------------------------------------------


#: Statements a no-op upgrade must not issue: no DDL, and no write to alembic_version.
WRITE_WORDS = {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE"}


def _revision(engine: Engine) -> str | None:
    with engine.connect() as c:
        return MigrationContext.configure(c).get_current_revision()


def test_upgrade_to_head_on_an_empty_database_then_again_is_a_no_op(engine: Engine) -> None:
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    assert head is not None
    assert _revision(engine) is None
    assert inspect(engine).get_table_names() == []

    upgrade(engine)
    assert _revision(engine) == head
    tables = set(inspect(engine).get_table_names())
    assert tables == set(metadata.tables) | {"alembic_version"}

    # Some state, then a second upgrade: no DDL at all, the rows untouched.
    cat = SqlCatalog(engine)
    cat.bind_store(STORE)
    committed(cat, pack(1), 1000, entries(bid(1)))
    statements: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        upgrade(engine)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    writes = [s for s in statements if s.lstrip().split(None, 1)[0].upper() in WRITE_WORDS]
    assert writes == []
    assert any("alembic_version" in s for s in statements)  # it did look
    assert _revision(engine) == head
    assert cat.locate([bid(1)])[bid(1)].pack == pack(1)
    assert cat.gc_epoch() == 0


def test_models_match_the_migrations(engine: Engine) -> None:
    """A model changed without a migration (or the reverse) shows up here."""
    upgrade(engine)
    with engine.connect() as c:
        ctx = MigrationContext.configure(
            c, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(ctx, metadata)
    assert diff == []


def test_catalog_before_bind_store_says_run_init(engine: Engine) -> None:
    upgrade(engine)
    cat = SqlCatalog(engine)
    with pytest.raises(NotFoundError, match="store init"):
        cat.add_snapshot(snap("ab" * 32, T0), 0)
    with pytest.raises(NotFoundError, match="store init"):
        cat.condemn([bid(1)], 1)
    assert cat.gc_epoch() == 0


# --- set-up -------------------------------------------------------------------


def test_bind_store_is_idempotent_and_refuses_another_store(catalog: SqlCatalog) -> None:
    catalog.bind_store(STORE)  # a second server with the same key file: fine
    catalog.bind_store(STORE)
    assert catalog.gc_epoch() == 0
    with pytest.raises(StoreKeyError) as err:
        catalog.bind_store("another-store")
    assert STORE in err.value.message and "another-store" in err.value.message
    assert err.value.exit_code == 6
    with catalog.engine.connect() as c:
        values = dict(c.execute(select(store_state.c.key, store_state.c.value)).all())
    assert values == {"store_id": STORE, "gc_epoch": "0"}  # untouched by the refusal


# --- blobs and packs ----------------------------------------------------------


def test_commit_pack_missing_and_locate(catalog: SqlCatalog) -> None:
    a, b, c, absent = bid(1), bid(2), bid(3), bid(9)
    assert catalog.missing([]) == set()
    assert catalog.missing([a, b]) == {a, b}
    assert catalog.max_pack_seq() == 0

    catalog.begin_pack(pack(1))
    catalog.begin_pack(pack(1))  # idempotent
    [info] = catalog.packs()
    assert (info.name, info.size, info.state) == (pack(1), 0, PACK_WRITING)
    assert info.created.tzinfo is not None
    assert catalog.missing([a, b]) == {a, b}  # a writing pack stores nothing yet

    committed(catalog, pack(1), 4096, entries(a, b))
    [info] = catalog.packs()
    assert (info.name, info.size, info.state) == (pack(1), 4096, PACK_OK)
    seq1 = info.seq
    # A pack not begun, or taken by a gc as an orphan, is not committed: nothing indexed.
    with pytest.raises(StoreBusyError, match="removed by a garbage collection"):
        catalog.commit_pack(pack(2), 2048, entries(c, a, kind=BlobKind.TREE))
    catalog.begin_pack(pack(3))
    assert catalog.claim_orphan(pack(3)) and catalog.claim_orphan(pack(3))  # (again: still taken)
    with pytest.raises(StoreBusyError):
        catalog.commit_pack(pack(3), 2048, entries(c, kind=BlobKind.TREE))
    assert not catalog.claim_orphan(pack(1))  # committed: not an orphan
    catalog.drop_pack(pack(3))
    assert catalog.missing([c]) == {c}
    committed(catalog, pack(2), 2048, entries(c, a, kind=BlobKind.TREE))
    assert catalog.max_pack_seq() > seq1
    assert [p.name for p in catalog.packs()] == [pack(1), pack(2)]

    assert catalog.missing([a, b, c, absent, absent]) == {absent}
    locs = catalog.locate([a, b, c, absent])
    assert set(locs) == {a, b, c}
    assert locs[b] == BlobLocation(pack(1), 100, 90, 200, BlobKind.DATA)
    assert locs[c] == BlobLocation(pack(2), 0, 90, 200, BlobKind.TREE)
    assert locs[a].pack in (pack(1), pack(2))  # in two packs: either copy will do
    assert [r.id for r in catalog.pack_blobs(pack(1))] == [a, b]  # in offset order
    assert len(list(catalog.iter_blobs())) == 4

    # Committing the same pack again replaces its rows (no duplicates, no error).
    committed(catalog, pack(1), 4096, entries(a, b, b))
    assert [r.id for r in catalog.pack_blobs(pack(1))] == [a, b]
    assert len(catalog.packs()) == 2


def test_known_ids_of_a_kind_without_condemned_rows_or_none_above_the_limit(
    catalog: SqlCatalog,
) -> None:
    """A writer's in-memory dedup set (``Writer.need``) is what ``missing`` would say."""
    a, b, c = bid(1), bid(2), bid(3)
    assert catalog.known_ids(BlobKind.DATA, 10) == set()
    committed(catalog, pack(1), 4096, entries(a, b))
    committed(catalog, pack(2), 4096, entries(c, a, kind=BlobKind.TREE))
    assert catalog.known_ids(BlobKind.DATA, 10) == {a, b}
    assert catalog.known_ids(BlobKind.TREE, 10) == {a, c}
    assert catalog.known_ids(BlobKind.DATA, 2) == {a, b}
    assert catalog.known_ids(BlobKind.DATA, 1) is None  # more than the limit
    catalog.condemn([b], catalog.max_pack_seq())
    assert catalog.known_ids(BlobKind.DATA, 10) == {a}


def test_missing_and_locate_by_kind(catalog: SqlCatalog) -> None:
    """One blob, one kind: an id held as DATA is missing as a TREE, on both dialects."""
    a, t = bid(1), bid(2)
    committed(catalog, pack(1), 4096, entries(a, t))  # both DATA
    assert catalog.missing([a, t]) == set()
    assert catalog.missing([a, t], kind=BlobKind.TREE) == {a, t}
    assert catalog.missing([a, t], kind=BlobKind.DATA) == set()
    assert catalog.locate([t], kind=BlobKind.TREE) == {}
    committed(catalog, pack(2), 2048, entries(t, kind=BlobKind.TREE))
    assert catalog.missing([a, t], kind=BlobKind.TREE) == {a}
    assert catalog.locate([t], kind=BlobKind.TREE)[t].pack == pack(2)
    assert catalog.locate([t], kind=BlobKind.DATA)[t].pack == pack(1)
    catalog.condemn([t], catalog.max_pack_seq())
    assert catalog.missing([t], kind=BlobKind.TREE) == {t}  # condemned counts as missing
    assert catalog.locate([t], include_condemned=True, kind=BlobKind.TREE)[t].pack == pack(2)


def test_many_ids_are_batched(catalog: SqlCatalog) -> None:
    ids = [i.to_bytes(4, "big") * 8 for i in range(1, 1301)]
    committed(catalog, pack(1), 10**6, entries(*ids[:1200]))
    assert catalog.missing(ids) == set(ids[1200:])
    assert len(catalog.locate(ids)) == 1200


def test_drop_pack_and_replace_index(catalog: SqlCatalog) -> None:
    committed(catalog, pack(1), 100, entries(bid(1)))
    committed(catalog, pack(2), 100, entries(bid(2)))
    catalog.drop_pack(pack(1))
    catalog.drop_pack(pack(7))  # unknown: nothing to do
    assert [p.name for p in catalog.packs()] == [pack(2)]
    assert catalog.missing([bid(1), bid(2)]) == {bid(1)}

    catalog.condemn([bid(2)], catalog.max_pack_seq())
    epoch = catalog.gc_epoch()
    catalog.replace_index([(pack(3), 300, entries(bid(3), bid(2)))])
    assert catalog.gc_epoch() == epoch + 1  # blobs may have left: what is remembered is checked
    assert [(p.name, p.size, p.state) for p in catalog.packs()] == [(pack(3), 300, PACK_OK)]
    assert catalog.missing([bid(1), bid(2), bid(3)]) == {bid(1)}  # rebuilt rows are live


# --- garbage collection -------------------------------------------------------


def test_condemn_bumps_the_epoch_and_hides_rows(catalog: SqlCatalog) -> None:
    a, b, c = bid(1), bid(2), bid(3)
    committed(catalog, pack(1), 100, entries(a, b))
    limit = catalog.max_pack_seq()
    committed(catalog, pack(2), 100, entries(c, a))  # written after the gc looked
    assert catalog.gc_epoch() == 0

    assert catalog.condemn([a, b, c], limit) == 1
    assert catalog.gc_epoch() == 1
    # Only rows in packs up to the limit: c, and a's newer copy, stay live.
    assert catalog.missing([a, b, c]) == {b}
    assert set(catalog.locate([a, b, c])) == {a, c}
    assert catalog.locate([a])[a].pack == pack(2)
    condemned = {(r.pack, r.id) for r in catalog.iter_blobs() if r.condemned}
    assert condemned == {(pack(1), a), (pack(1), b)}

    assert catalog.condemn([], limit) == 2  # every condemn moves the epoch
    assert catalog.gc_epoch() == 2


def test_rescue_uncondemns_and_reports_swept_ids(catalog: SqlCatalog) -> None:
    a, b, never = bid(1), bid(2), bid(9)
    committed(catalog, pack(1), 100, entries(a, b))
    catalog.condemn([a, b], catalog.max_pack_seq())
    assert catalog.missing([a, b]) == {a, b}

    assert catalog.rescue([a, never]) == {never}
    assert catalog.missing([a, b]) == {b}
    assert catalog.locate([a])[a].pack == pack(1)
    assert catalog.rescue([a]) == set()  # live already: nothing to report
    assert catalog.rescue([]) == set()
    assert catalog.gc_epoch() == 1  # rescue does not move the epoch

    # Swept (the pack dropped): rescue can no longer help.
    catalog.drop_pack(pack(1))
    assert catalog.rescue([a, b]) == {a, b}


def test_finish_repack(catalog: SqlCatalog) -> None:
    a, b, c = bid(1), bid(2), bid(3)
    committed(catalog, pack(1), 300, entries(a, b, c))
    catalog.condemn([c], catalog.max_pack_seq())
    committed(catalog, pack(2), 200, entries(a))  # a copied out
    assert catalog.finish_repack(pack(1), [a]) is False  # b still lives only there
    assert [r.id for r in catalog.pack_blobs(pack(1))] == [b]
    committed(catalog, pack(3), 100, entries(b))
    assert catalog.finish_repack(pack(1), [b]) is True
    # its row stays, ``writing``, until its file is deleted and the row dropped
    states = {p.name: p.state for p in catalog.packs()}
    assert states == {pack(1): PACK_WRITING, pack(2): PACK_OK, pack(3): PACK_OK}
    assert catalog.pack_blobs(pack(1)) == []
    catalog.drop_pack(pack(1))
    assert [p.name for p in catalog.packs()] == [pack(2), pack(3)]
    assert catalog.finish_repack(pack(1), []) is True  # already gone
    assert catalog.missing([a, b, c]) == {c}


def test_try_lock_and_unlock(catalog: SqlCatalog) -> None:
    hour = dt.timedelta(hours=1)
    assert catalog.try_lock("gc", "alice", hour)
    assert not catalog.try_lock("gc", "bob", hour)
    assert catalog.try_lock("gc", "alice", hour)  # the holder may renew
    assert catalog.try_lock("other", "bob", hour)  # locks are by name
    catalog.unlock("gc", "bob")  # not bob's: no effect
    assert not catalog.try_lock("gc", "bob", hour)
    holder, expires = catalog.lock_info("gc") or ("", None)  # who holds it, until when
    assert holder == "alice" and expires is not None
    assert hour - dt.timedelta(minutes=1) < expires - dt.datetime.now(dt.UTC) <= hour
    catalog.unlock("gc", "alice")
    catalog.unlock("gc", "alice")  # idempotent
    assert catalog.lock_info("gc") is None
    assert catalog.try_lock("gc", "bob", hour)
    assert not catalog.try_lock("gc", "alice", hour)
    assert (catalog.lock_info("gc") or ("",))[0] == "bob"


def test_an_expired_lock_can_be_taken_over(
    catalog: SqlCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The catalog's clock, moved by the test: a slow commit must not expire the lock early.
    clock = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    monkeypatch.setattr(catalog_mod, "_now", lambda: clock[0])
    assert catalog.try_lock("gc", "crashed", dt.timedelta(milliseconds=500))
    clock[0] += dt.timedelta(milliseconds=499)
    assert not catalog.try_lock("gc", "next", dt.timedelta(hours=1))
    clock[0] += dt.timedelta(milliseconds=2)
    assert catalog.try_lock("gc", "next", dt.timedelta(hours=1))
    assert not catalog.try_lock("gc", "crashed", dt.timedelta(hours=1))  # it lost the lock
    catalog.unlock("gc", "crashed")  # a late unlock by the old holder changes nothing
    assert not catalog.try_lock("gc", "third", dt.timedelta(hours=1))


def test_racing_for_a_free_lock_one_wins(catalog: SqlCatalog) -> None:
    results: dict[str, bool] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def take(holder: str) -> None:
        try:
            start.wait()
            results[holder] = catalog.try_lock("race", holder, dt.timedelta(hours=1))
        except BaseException as e:  # handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=take, args=(f"h{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results.values()) == [False] * 5 + [True]


# --- snapshots ----------------------------------------------------------------


def test_add_snapshot_refuses_a_stale_epoch(catalog: SqlCatalog) -> None:
    first = snap("a1" * 32, T0, note="x")
    assert catalog.add_snapshot(first, 0)
    assert catalog.add_snapshot(first, 0)  # the same commit retried: idempotent
    assert [s.id for s in catalog.snapshots()] == [first.id]

    catalog.condemn([], catalog.max_pack_seq())  # a gc ran meanwhile: epoch 1
    late = snap("b2" * 32, T0 + dt.timedelta(seconds=1))
    assert not catalog.add_snapshot(late, 0)
    assert [s.id for s in catalog.snapshots()] == [first.id]
    assert catalog.add_snapshot(late, 1)
    assert [s.id for s in catalog.snapshots()] == [first.id, late.id]


def test_snapshot_rows_round_trip(catalog: SqlCatalog) -> None:
    rec = SnapshotRecord(
        id="c3" * 32,
        time=T0,
        source="host:/home",
        root=bytes(range(32)),
        files=10**10,
        bytes=5 * 10**12,
        meta={"path": "/home", "errors": 0, "nested": {"k": [1, 2]}},
    )
    assert catalog.add_snapshot(rec, 0)
    assert catalog.snapshots() == [rec]
    assert catalog.find_snapshot("latest") == rec
    assert catalog.find_snapshot("latest").time.tzinfo is not None


def test_snapshot_time_keeps_its_instant_whatever_the_offset(catalog: SqlCatalog) -> None:
    east = dt.timezone(dt.timedelta(hours=2))
    catalog.add_snapshot(snap("c3" * 32, T0.astimezone(east)), 0)
    catalog.add_snapshot(snap("c4" * 32, T0 + dt.timedelta(hours=1)), 0)
    got = catalog.snapshots()
    assert got[0].time == T0  # the same instant, whatever offset it came with
    assert [s.id for s in got] == ["c3" * 32, "c4" * 32]
    assert catalog.find_snapshot("latest").id == "c4" * 32


def test_snapshot_listing_by_source_position_and_forget(catalog: SqlCatalog) -> None:
    ids = ["d1" * 32, "d2" * 32, "d3" * 32]
    catalog.add_snapshot(snap(ids[0], T0, source="a"), 0)
    catalog.add_snapshot(snap(ids[2], T0 + dt.timedelta(hours=2), source="b"), 0)
    mark = catalog.last_snapshot_seq()
    catalog.add_snapshot(snap(ids[1], T0 + dt.timedelta(hours=1), source="a"), 0)
    assert [s.id for s in catalog.snapshots()] == ids  # by time, not by insertion
    assert [s.id for s in catalog.snapshots("a")] == [ids[0], ids[1]]
    assert catalog.snapshots("nobody") == []
    assert [s.id for _, s in catalog.snapshots_since(mark)] == [ids[1]]
    assert catalog.snapshots_since(catalog.last_snapshot_seq()) == []

    assert catalog.forget_snapshots([ids[0], "ee" * 32]) == 1
    assert catalog.forget_snapshots([]) == 0
    assert [s.id for s in catalog.snapshots()] == ids[1:]


def test_find_snapshot(catalog: SqlCatalog) -> None:
    with pytest.raises(NotFoundError, match="no snapshots"):
        catalog.find_snapshot("latest")
    older, newer, other = "abcd12" + "0" * 58, "abcd34" + "0" * 58, "f00d" + "1" * 60
    catalog.add_snapshot(snap(newer, T0 + dt.timedelta(minutes=5)), 0)
    catalog.add_snapshot(snap(older, T0), 0)  # inserted last, but older
    catalog.add_snapshot(snap(other, T0 - dt.timedelta(days=1)), 0)

    assert catalog.find_snapshot("latest").id == newer  # by time, not insertion order
    assert catalog.find_snapshot(older).id == older
    assert catalog.find_snapshot("abcd1").id == older
    assert catalog.find_snapshot("ABCD3").id == newer  # case does not matter
    assert catalog.find_snapshot("f00d").id == other
    with pytest.raises(ConflictError, match="ambiguous"):
        catalog.find_snapshot("abcd")
    with pytest.raises(NotFoundError, match="no snapshot beef"):
        catalog.find_snapshot("beef")
    for bad in ("abc", "", "zzzz", "abcd%", "ab_d", "latest2"):
        with pytest.raises(UsageError, match="4 hex digits"):
            catalog.find_snapshot(bad)


def test_latest_breaks_time_ties_by_insertion(catalog: SqlCatalog) -> None:
    catalog.add_snapshot(snap("11" * 32, T0), 0)
    catalog.add_snapshot(snap("22" * 32, T0), 0)
    assert catalog.find_snapshot("latest").id == "22" * 32


def test_head_constant_matches_the_migrations() -> None:
    from alembic.script import ScriptDirectory

    from lamina.db.migrate import HEAD, MIGRATIONS

    script = ScriptDirectory(str(MIGRATIONS))
    assert script.get_current_head() == HEAD


def test_a_packs_rows_go_in_in_id_order(catalog: SqlCatalog, engine: Engine) -> None:
    """A pack's index rows are inserted in id order, whatever the order of its entries
    (each page of the key's index is touched once, not once per row at random: 403 ->
    324 ms of CPU for 100,000 rows on SQLite), and each one is found where it is."""
    ids = [bid(n) for n in (7, 3, 9, 1, 5)]
    inserted: list[bytes] = []

    def record(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO BLOBS"):
            rows = params if many else [params]
            for r in rows:
                v = r["id"] if isinstance(r, dict) else r[0]
                inserted.append(bytes(getattr(v, "obj", v)))  # (psycopg: its Binary)

    event.listen(engine, "before_cursor_execute", record)
    try:
        committed(catalog, pack(1), 1000, entries(*ids))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert inserted == sorted(ids)
    found = catalog.locate(ids)
    assert [found[i].offset for i in ids] == [0, 100, 200, 300, 400]


def test_a_gc_taking_a_pack_between_its_commits_read_and_update_wins(
    request: pytest.FixtureRequest,
) -> None:
    """PostgreSQL reads committed rows: a gc's ``claim_orphan`` may commit after the
    writer's ``commit_pack`` read the pack as ``writing`` and before it updates it. The
    update must then change nothing and the commit be refused, or the pack is
    acknowledged while the gc deletes its file and row (on SQLite the writer's
    transaction holds the database from its first statement: no such window)."""
    url: str = request.getfixturevalue("pg_db_url")
    engine = make_engine(url)
    upgrade(engine)
    cat, gc_cat = SqlCatalog(engine), SqlCatalog(make_engine(url))
    cat.bind_store(STORE)
    gc_cat.bind_store(STORE)
    name, a = pack(7), bid(7)
    cat.begin_pack(name)
    claimed: list[bool] = []

    def claim_after_the_read(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not claimed and statement.lstrip().upper().startswith("SELECT PACKS.SEQ"):
            claimed.append(gc_cat.claim_orphan(name))  # another connection, committed

    event.listen(engine, "after_cursor_execute", claim_after_the_read)
    try:
        with pytest.raises(StoreBusyError, match="removed by a garbage collection"):
            cat.commit_pack(name, 1000, entries(a))
    finally:
        event.remove(engine, "after_cursor_execute", claim_after_the_read)
    assert claimed == [True]
    [info] = [p for p in cat.packs() if p.name == name]
    assert info.state == "dropping" and cat.missing([a]) == {a}
    cat.close()
    gc_cat.close()
