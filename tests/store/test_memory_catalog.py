"""store/memory_catalog.py behaves as the SQL catalog on the same calls."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from lamina.db.catalog import SqlCatalog
from lamina.db.engine import make_engine
from lamina.db.migrate import upgrade
from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.store.blob import BlobKind
from lamina.store.catalog import Catalog, SnapshotRecord
from lamina.store.memory_catalog import MemoryCatalog
from lamina.store.pack import PackEntry


def committed(cat: Any, name: str, size: int, ents: Any) -> None:
    """A pack as a writer stores it: begun (``writing``), then committed."""
    cat.begin_pack(name)
    cat.commit_pack(name, size, ents)


def _sql(tmp_path: Path) -> SqlCatalog:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    cat = SqlCatalog(engine)
    cat.bind_store("s")
    return cat


def _scenario(cat: Catalog) -> list[object]:
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    out: list[object] = []
    cat.begin_pack("p1")
    committed(
        cat,
        "p1",
        300,
        [PackEntry(BlobKind.DATA, a, 0, 100, 90), PackEntry(BlobKind.TREE, b, 100, 100, 90)],
    )
    committed(
        cat,
        "p2",
        200,
        [PackEntry(BlobKind.DATA, b, 0, 100, 90), PackEntry(BlobKind.DATA, c, 100, 100, 90)],
    )
    out.append(sorted(cat.missing([a, b, c, bytes(32)])))
    out.append(sorted(cat.missing([b], kind=BlobKind.TREE)))
    out.append(sorted(cat.locate([b], kind=BlobKind.DATA).items()))
    out.append([(p.name, p.size, p.state) for p in cat.packs()])
    seq2 = max(p.seq for p in cat.packs())
    out.append(cat.max_pack_seq() == seq2)
    e = cat.condemn([a], seq2, copies=[(b, seq2)])
    out.append((e, cat.gc_epoch()))
    out.append(sorted(cat.missing([a, b])))
    out.append(sorted(cat.locate([a], include_condemned=True)))
    out.append([(r.id, r.condemned) for r in cat.iter_blobs()])
    out.append(sorted(cat.rescue([b, bytes(32)])))
    out.append(cat.finish_repack("p1", [b]))
    out.append([(r.id, r.condemned) for r in cat.pack_blobs("p1")])
    rec = SnapshotRecord("ab" * 32, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "h:/", c, 1, 2, {})
    out.append((cat.add_snapshot(rec, 0), cat.add_snapshot(rec, e), cat.add_snapshot(rec, e)))
    out.append([s.id for s in cat.snapshots()] + [s.id for s in cat.snapshots("other")])
    out.append((cat.find_snapshot("abab").id, cat.find_snapshot("latest").id))
    for ref, err in (("ab", UsageError), ("cdcd", NotFoundError)):
        with pytest.raises(err):
            cat.find_snapshot(ref)
    out.append(
        (
            cat.try_lock("gc", "x", dt.timedelta(hours=1)),
            cat.try_lock("gc", "y", dt.timedelta(hours=1)),
        )
    )
    cat.unlock("gc", "x")
    out.append(cat.try_lock("gc", "y", dt.timedelta(hours=1)))
    out.append((cat.forget_snapshots([rec.id]), cat.snapshots()))
    cat.drop_pack("p2")
    out.append([(p.name, p.seq, p.size, p.state) for p in cat.packs()])  # (times differ)
    return out


def test_memory_catalog_answers_as_the_sql_catalog(tmp_path: Path) -> None:
    sql = _sql(tmp_path)
    try:
        assert _scenario(MemoryCatalog()) == _scenario(sql)
    finally:
        sql.close()


def test_ambiguous_prefix() -> None:
    cat = MemoryCatalog()
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for sid in ("abcd01", "abcd02"):
        cat.add_snapshot(SnapshotRecord(sid, t, "h", bytes(32), 0, 0, {}), 0)
    with pytest.raises(ConflictError, match="ambiguous"):
        cat.find_snapshot("abcd")
