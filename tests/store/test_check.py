from __future__ import annotations

from pathlib import Path

from lamina.db.stores import StoreLocation, open_store
from lamina.store.check import check
from lamina.store.pack import pack_object_name
from lamina.store.rebuild import rebuild_index
from lamina.store.repository import Store
from lamina.store.roots import snapshot_roots
from lamina.tree.backup import walk_blobs
from lamina.tree.model import references
from tests.store.helpers import random_files, snapshot_of


def _check(store: Store, read_data: bool = False):  # type: ignore[no-untyped-def]
    return check(store, [snapshot_roots(store.catalog)], references, read_data=read_data)


def _pack_path(tmp_path: Path, name: str) -> Path:
    return tmp_path / "data" / "store" / pack_object_name(name)


def test_clean_store_checks_clean(store: Store) -> None:
    snapshot_of(store, random_files(10))
    rep = _check(store, read_data=True)
    assert rep.ok, rep.errors
    assert rep.roots == 1 and rep.trees == 1 and rep.blobs >= 12


def test_flipped_byte_found_only_by_read_data_and_named(store: Store, tmp_path: Path) -> None:
    snap = snapshot_of(store, random_files(10))
    p = store.catalog.packs()[0]
    path = _pack_path(tmp_path, p.name)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x01
    path.write_bytes(bytes(raw))
    assert _check(store).ok  # same size: structure is intact
    rep = _check(store, read_data=True)
    assert not rep.ok
    text = "\n".join(rep.errors)
    assert p.name[:16] in text
    assert f"snapshot {snap.id[:12]}" in text  # the damaged snapshot is named


def test_truncated_and_missing_packs(store: Store, tmp_path: Path) -> None:
    snapshot_of(store, random_files(30))
    packs = store.catalog.packs()
    assert len(packs) >= 2
    a, b = packs[0], packs[1]
    pa = _pack_path(tmp_path, a.name)
    pa.write_bytes(pa.read_bytes()[:-100])
    _pack_path(tmp_path, b.name).unlink()
    rep = _check(store)
    text = "\n".join(rep.errors)
    assert f"pack {a.name[:16]} is" in text and "truncated" in text
    assert f"pack {b.name[:16]} is indexed but missing" in text


def test_tree_naming_unstored_chunk_is_reported(store: Store) -> None:
    snap = snapshot_of(store, random_files(3))
    chunk = next(b for b in walk_blobs(store, snap.root) if b != snap.root)
    loc = store.catalog.locate([chunk])[chunk]
    store.catalog.drop_pack(loc.pack)
    rep = _check(store)
    assert any("missing from the store" in e for e in rep.errors)


def test_rebuild_index_from_packs_alone(tmp_path: Path) -> None:
    loc = StoreLocation(data=tmp_path / "data")
    from lamina.db.stores import init_store

    store = init_store(loc)
    store.pack_size = 100_000
    snaps = [snapshot_of(store, random_files(5), f"s{i}") for i in range(3)]
    store.close()
    (tmp_path / "data" / "lamina.db").unlink()  # the database is lost
    store = open_store(loc)
    assert store.catalog.snapshots() == []
    rep = rebuild_index(store, references)
    assert rep.snapshots_recovered == 3 and not rep.skipped
    assert {s.id for s in store.catalog.snapshots()} == {s.id for s in snaps}
    for s in snaps:
        for bid in walk_blobs(store, s.root):
            store.get(bid)
    assert _check(store, read_data=True).ok
    store.close()


def test_rebuild_skips_damaged_pack_and_says_so(store: Store, tmp_path: Path) -> None:
    snapshot_of(store, random_files(30))
    p = store.catalog.packs()[0]
    path = _pack_path(tmp_path, p.name)
    path.write_bytes(path.read_bytes()[:-3])
    rep = rebuild_index(store, references)
    assert any(p.name[:16] in m for m in rep.skipped)
    assert p.name not in {x.name for x in store.catalog.packs()}
