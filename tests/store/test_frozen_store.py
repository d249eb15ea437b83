"""A store made once by tests/data/make_test_store.py (format v1) and committed: today's
code must open it, check it, restore it exactly and rebuild its index from its packs.

If one of these fails, a format changed: give it a new version and keep reading v1.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.db.stores import StoreLocation, open_store
from lamina.store.check import check
from lamina.store.rebuild import rebuild_index
from lamina.store.repository import Store
from lamina.store.roots import snapshot_roots
from lamina.tree.model import references
from lamina.tree.restore import restore_tree
from tests.data.make_test_store import MANIFEST, TARBALL, manifest


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tarball unpacked once; tests copy it before they change anything."""
    out = tmp_path_factory.mktemp("frozen")
    with tarfile.open(TARBALL) as tar:
        tar.extractall(out, filter="data")
    return out / "store"


@pytest.fixture
def store(frozen: Path, tmp_path: Path) -> Iterator[Store]:
    data = tmp_path / "store"
    shutil.copytree(frozen, data)
    s = open_store(StoreLocation(data=data))
    yield s
    s.close()


def _expected() -> list[dict[str, object]]:
    snaps: list[dict[str, object]] = json.loads(MANIFEST.read_text())["snapshots"]
    return snaps


def test_the_committed_store_is_small() -> None:
    assert TARBALL.stat().st_size < 200 * 1024


def test_opens_and_checks_with_every_blob_read(store: Store) -> None:
    assert [s.id for s in store.catalog.snapshots()] == [s["id"] for s in _expected()]
    rep = check(store, [snapshot_roots(store.catalog)], references, read_data=True)
    assert rep.ok, rep.errors


def test_restores_exactly(store: Store, tmp_path: Path) -> None:
    for snap in _expected():
        record = store.catalog.find_snapshot(str(snap["id"]))
        target = tmp_path / f"restore-{snap['id']}"
        stats = restore_tree(store, record.root, target, same_owner=False)
        assert not stats.errors
        assert manifest(target) == snap["files"]


def test_rebuilds_its_index_from_the_packs(store: Store) -> None:
    before = store.stats()
    with store.catalog.engine.begin() as c:  # type: ignore[attr-defined]
        c.exec_driver_sql("DELETE FROM snapshots")
    assert store.catalog.snapshots() == []
    rep = rebuild_index(store, references)
    assert not rep.skipped and rep.snapshots_recovered == len(_expected())
    assert [s.id for s in store.catalog.snapshots()] == [s["id"] for s in _expected()]
    after = store.stats()
    assert (after.packs, after.blobs, after.raw_bytes) == (
        before.packs,
        before.blobs,
        before.raw_bytes,
    )
    assert check(store, [snapshot_roots(store.catalog)], references, read_data=True).ok


def test_a_forgotten_snapshot_leaves_a_marker_rebuild_respects(store: Store) -> None:
    first, second = (str(s["id"]) for s in _expected())
    assert store.forget([first]) == 1
    assert store.forgotten() == {first}
    assert [n for n, _ in store.backend.list("forgotten/")] == [f"forgotten/{first}"]
    with store.catalog.engine.begin() as c:  # type: ignore[attr-defined]
        c.exec_driver_sql("DELETE FROM snapshots")
    rep = rebuild_index(store, references)
    assert [s.id for s in store.catalog.snapshots()] == [second]
    assert rep.snapshots_recovered == 1
