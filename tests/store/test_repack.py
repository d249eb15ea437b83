"""Small packs rolled into full ones (``store.repack``): sizes, and a crash at every step."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.check import check
from lamina.store.gc import collect
from lamina.store.pack import pack_object_name
from lamina.store.repack import InjectedCrash, move_live, roll_small
from lamina.store.repository import Store
from lamina.store.roots import snapshot_roots
from lamina.tree.backup import walk_blobs
from lamina.tree.model import references
from tests.store.helpers import snapshot_of


def _small_packs(store: Store, n: int, size: int = 20_000) -> dict[bytes, bytes]:
    """``n`` small packs (one writer each, as one bundle each on a server); their blobs."""
    out: dict[bytes, bytes] = {}
    for _ in range(n):
        data = os.urandom(size)
        with store.writer() as w:
            out[w.put(BlobKind.DATA, data)] = data
    return out


def _all_there(store: Store, blobs: dict[bytes, bytes]) -> None:
    assert store.catalog.missing(list(blobs)) == set()
    for bid, data in blobs.items():
        assert store.get(bid) == data


def _restorable(store: Store, snap: SnapshotRecord) -> None:
    for bid in walk_blobs(store, snap.root):
        store.get(bid)


def _checked(store: Store) -> None:
    rep = check(store, [snapshot_roots(store.catalog)], references, read_data=True)
    assert rep.ok, rep.errors


def test_small_packs_roll_into_full_ones(store: Store) -> None:
    blobs = _small_packs(store, 30)  # 30 x 20 KB, pack size 256 KiB
    snap = snapshot_of(store, {b"a": os.urandom(1000)})
    assert len(store.catalog.packs()) == 31
    rep = roll_small(store)
    assert rep is not None and rep.packs_deleted == 31
    sizes = sorted(p.size for p in store.catalog.packs())
    assert len(sizes) == 3  # 600 KB: two full packs and the rest
    assert all(s >= store.pack_size for s in sizes[1:])
    _all_there(store, blobs)
    _restorable(store, snap)
    _checked(store)
    # the old files are gone, not only their rows
    assert {n for n, _ in store.backend.list("packs/")} == {
        pack_object_name(p.name) for p in store.catalog.packs()
    }


def test_nothing_rolls_until_the_small_packs_make_a_full_one(store: Store) -> None:
    _small_packs(store, 3)
    assert roll_small(store) is None
    assert len(store.catalog.packs()) == 3
    assert roll_small(store, force=True) is not None
    assert len(store.catalog.packs()) == 1


def test_rolling_waits_for_the_collector(store: Store) -> None:
    _small_packs(store, 30)
    assert store.catalog.try_lock("gc", "someone", dt.timedelta(minutes=1))
    assert roll_small(store) is None
    assert len(store.catalog.packs()) == 30


def test_the_writer_counts_small_packs_until_a_roll_is_due(store: Store) -> None:
    assert not store.take_small_due()
    _small_packs(store, 14)  # 14 x 20 KB > 256 KiB
    assert store.take_small_due()
    assert not store.take_small_due()  # once


def _steps(olds: int) -> int:
    return 1 + 3 * olds


@pytest.mark.parametrize("n", range(_steps(4)))
def test_a_crash_at_any_step_loses_nothing(store: Store, n: int) -> None:
    blobs = _small_packs(store, 3)
    # a snapshot names them (its tree and record: the fourth pack), so gc keeps them
    snap = snapshot_of(store, {bid[:8].hex().encode(): data for bid, data in blobs.items()})
    olds = [(p, store.catalog.pack_blobs(p.name)) for p in store.catalog.packs()]
    assert len(olds) == 4
    with pytest.raises(InjectedCrash):
        move_live(store, olds, fail_after=n)
    _all_there(store, blobs)
    _restorable(store, snap)
    _checked(store)
    # the next roll (if small packs are left) and gc finish the job: one pack, no stray file
    roll_small(store, force=True)
    collect(store, [snapshot_roots(store.catalog)], references, orphan_grace=dt.timedelta(0))
    _all_there(store, blobs)
    _restorable(store, snap)
    _checked(store)
    assert [p.state for p in store.catalog.packs()] == ["ok"]
    assert {n for n, _ in store.backend.list("packs/")} == {
        pack_object_name(p.name) for p in store.catalog.packs()
    }
