"""``lamina.db.sqlite_read``: a SQLite catalog's snapshots read with the standard
library mean what ``SqlCatalog.snapshots`` says, and anything it cannot vouch for (no
file, an older schema, no store bound yet) is left to the usual way."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina.db.catalog import SqlCatalog
from lamina.db.engine import make_engine
from lamina.db.migrate import upgrade
from lamina.db.sqlite_read import read_snapshots
from lamina.errors import StoreKeyError
from lamina.store.catalog import SnapshotRecord

STORE = "0f7e2c1a-0000-4000-8000-000000000001"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database at the newest schema, made once (migrating takes seconds)."""
    path = tmp_path_factory.mktemp("template") / "lamina.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect() as c:
        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture
def new_db(migrated: Path, tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        shutil.copyfile(migrated, tmp_path / name)
        return tmp_path / name

    return make


def _catalog(path: Path, bind: bool = True) -> SqlCatalog:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)  # a no-op on a copy of ``migrated``
    cat = SqlCatalog(engine)
    if bind:
        cat.bind_store(STORE)
    return cat


def test_reads_what_the_sql_catalog_reads(new_db: Callable[[str], Path]) -> None:
    db = new_db("lamina.db")
    cat = _catalog(db)
    # Out of order in time, a tie on time (seq breaks it), a whole second (no
    # microseconds in SQLite's text), a time given in another zone, two sources, meta.
    at = [
        T0 + dt.timedelta(hours=2),
        T0,
        T0,
        T0.replace(microsecond=0) + dt.timedelta(days=1),
        (T0 + dt.timedelta(hours=1)).astimezone(dt.timezone(dt.timedelta(hours=5))),
    ]
    for n, t in enumerate(at):
        record = SnapshotRecord(
            id=f"{n:02d}" + "ab" * 31,
            time=t,
            source="a:/etc" if n % 2 else "b:/home",
            root=bytes([n]) * 32,
            files=n * 10,
            bytes=n * 1000 + 2**40,
            meta={"path": "/etc", "errors": n, "tags": ["x", n], "nested": {"k": None}},
        )
        assert cat.add_snapshot(record, cat.gc_epoch())
    try:
        for source in (None, "a:/etc", "b:/home", "c:/nothing"):
            want = cat.snapshots(source)
            got = read_snapshots(db, STORE, source)
            assert got == want
            assert [s.to_public() for s in got or []] == [s.to_public() for s in want]
        assert len(read_snapshots(db, STORE) or []) == 5
    finally:
        cat.close()


def test_leaves_what_it_cannot_vouch_for_to_the_usual_way(
    tmp_path: Path, new_db: Callable[[str], Path]
) -> None:
    assert read_snapshots(tmp_path / "absent.db", STORE) is None
    (tmp_path / "empty.db").write_bytes(b"")
    assert read_snapshots(tmp_path / "empty.db", STORE) is None  # no tables yet
    unbound = new_db("unbound.db")
    assert read_snapshots(unbound, STORE) is None  # bind_store writes the store id
    older = new_db("older.db")
    _catalog(older).close()
    with sqlite3.connect(older) as c:
        c.execute("UPDATE alembic_version SET version_num = '0001_initial'")
    c.close()
    assert read_snapshots(older, STORE) is None  # open_store migrates it first


def test_a_database_of_another_store_is_refused_as_bind_store_does(
    new_db: Callable[[str], Path],
) -> None:
    db = new_db("lamina.db")
    _catalog(db).close()
    other = "0f7e2c1a-0000-4000-8000-000000000002"
    with pytest.raises(StoreKeyError) as quick:
        read_snapshots(db, other)
    cat = _catalog(db, bind=False)
    try:
        with pytest.raises(StoreKeyError) as usual:
            cat.bind_store(other)
    finally:
        cat.close()
    assert quick.value.message == usual.value.message
