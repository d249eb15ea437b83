from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path

import pytest

from lamina.db.location import StoreLocation
from lamina.db.roots import all_roots
from lamina.db.stores import init_store, open_store
from lamina.errors import BackendError, MissingDataError, StoreBusyError
from lamina.store import gc as gc_module
from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.check import check
from lamina.store.gc import collect
from lamina.store.pack import pack_object_name
from lamina.store.repack import InjectedCrash, roll_small
from lamina.store.repository import Store
from lamina.store.roots import snapshot_roots
from lamina.tree.backup import walk_blobs
from lamina.tree.model import Entry, encode_tree, references
from tests.store.helpers import random_files, snapshot_of


def _gc(store: Store, **kw):  # type: ignore[no-untyped-def]
    return collect(store, [snapshot_roots(store.catalog)], references, **kw)


def _restorable(store: Store, snap: SnapshotRecord) -> None:
    for bid in walk_blobs(store, snap.root):
        store.get(bid)


def test_gc_frees_forgotten_and_keeps_kept(store: Store) -> None:
    keep = snapshot_of(store, random_files(5), "keep")
    drop = snapshot_of(store, random_files(20), "drop")
    before = sum(p.size for p in store.catalog.packs())
    store.catalog.forget_snapshots([drop.id])
    rep = _gc(store)
    assert rep.condemned > 20
    after = sum(p.size for p in store.catalog.packs())
    assert after < before / 2
    _restorable(store, keep)
    rep2 = check(store, [snapshot_roots(store.catalog)], references, read_data=True)
    assert rep2.ok, rep2.errors
    # Nothing left on disk that the index does not know.
    names = {n for n, _ in store.backend.list("packs/")}
    assert names == {pack_object_name(p.name) for p in store.catalog.packs()}


def _one_pack_mostly_unreferenced(
    store: Store, keep: int, drop: int
) -> tuple[SnapshotRecord, list[bytes]]:
    """One pack: ``keep`` blobs a snapshot names and ``drop`` blobs nothing names."""
    store.pack_size = 10 * 1024 * 1024
    with store.writer() as w:
        keep_ids = [w.put(BlobKind.DATA, os.urandom(10_000)) for _ in range(keep)]
        drop_ids = [w.put(BlobKind.DATA, os.urandom(10_000)) for _ in range(drop)]
        entries = [
            Entry(name=f"k{i}".encode(), type="file", size=10_000, content=[c])
            for i, c in enumerate(keep_ids)
        ]
        root = w.put(BlobKind.TREE, encode_tree(entries))
        rec = SnapshotRecord("", dt.datetime.now(dt.UTC), "s", root, keep, 0, {})
        return w.commit_snapshot(rec, lambda r: walk_blobs(store, r)), drop_ids


def test_gc_repacks_sparse_packs(store: Store) -> None:
    snap, drop_ids = _one_pack_mostly_unreferenced(store, keep=3, drop=30)
    assert len(store.catalog.packs()) == 1
    rep = _gc(store)
    assert rep.packs_repacked == 1
    assert store.catalog.missing(drop_ids) == set(drop_ids)
    _restorable(store, snap)
    assert sum(p.size for p in store.catalog.packs()) < 100_000


def test_dry_run_changes_nothing(store: Store) -> None:
    drop = snapshot_of(store, random_files(3), "drop")
    store.catalog.forget_snapshots([drop.id])
    packs = store.catalog.packs()
    rep = _gc(store, dry_run=True)
    assert rep.condemned > 0
    assert store.catalog.packs() == packs
    assert store.catalog.gc_epoch() == 0


@pytest.mark.parametrize("sparse", [False, True])
def test_dry_run_prints_the_figures_the_run_then_frees(store: Store, sparse: bool) -> None:
    """plan -> stats -> execute: --dry-run reports what the real run removes, byte for byte
    (today's packs deleted whole, or repacked when a kept snapshot shares them)."""
    if sparse:  # one pack, mostly blobs no snapshot names: it is repacked
        keep, _ = _one_pack_mostly_unreferenced(store, keep=2, drop=20)
    else:
        keep = snapshot_of(store, random_files(2, 5_000), "keep")
        drop = snapshot_of(store, random_files(12, 20_000), "drop")
        store.catalog.forget_snapshots([drop.id])
    dry = _gc(store, dry_run=True)
    assert dry.bytes_freed > 0 and dry.dry_run
    assert (dry.packs_deleted, dry.packs_repacked) != (0, 0)
    real = _gc(store)
    assert (real.bytes_freed, real.packs_deleted, real.packs_repacked, real.condemned) == (
        dry.bytes_freed,
        dry.packs_deleted,
        dry.packs_repacked,
        dry.condemned,
    )
    assert (real.packs_repacked > 0) == sparse
    _restorable(store, keep)
    again = _gc(store, dry_run=True)
    assert (again.bytes_freed, again.packs_deleted, again.packs_repacked) == (0, 0, 0)


def test_orphan_packs_removed_after_grace(store: Store) -> None:
    w = store.writer()
    w.put(BlobKind.DATA, os.urandom(1000))
    # Simulate a crash between the pack file and its index rows.
    finished = w._pack.finish()
    store.catalog.begin_pack(finished.name)
    store.backend.write(pack_object_name(finished.name), finished.data)
    w.close(flush=False)
    rep = _gc(store)  # within the grace period: kept (a writer may still be busy)
    assert rep.orphans_deleted == 0
    assert store.backend.exists(pack_object_name(finished.name))
    rep = _gc(store, orphan_grace=dt.timedelta(seconds=-1))
    assert rep.orphans_deleted == 1
    assert not store.backend.exists(pack_object_name(finished.name))


def test_writer_that_deduplicated_against_condemned_blobs_rescues_them(store: Store) -> None:
    shared = random_files(4)
    old = snapshot_of(store, shared, "old")
    store.catalog.forget_snapshots([old.id])
    # A writer starts, sees the blobs stored, and relies on them (no upload).
    w = store.writer()
    with w:
        entries = []
        for name, data in shared.items():
            from lamina.store import blob

            cid = blob.blob_id(store.keys.chunking.id_key, data)
            assert not w.need([cid])
            entries.append(Entry(name=name, type="file", size=len(data), content=[cid]))
        # Meanwhile a collection condemns them (the writer's snapshot is not a root yet)
        # but stops before sweeping.
        ids = {r.id for r in store.catalog.iter_blobs()}
        store.catalog.condemn(ids, store.catalog.max_pack_seq())
        root = w.put(BlobKind.TREE, encode_tree(entries))
        rec = SnapshotRecord("", dt.datetime.now(dt.UTC), "new", root, 4, 0, {})
        snap = w.commit_snapshot(rec, lambda r: walk_blobs(store, r))
    # The commit noticed the epoch moved and un-condemned what it needs: a sweep
    # now (the collector's second look already happened) must not take them.
    needed = set(walk_blobs(store, snap.root))
    assert store.catalog.missing(needed) == set()
    _restorable(store, snap)


def test_writer_fails_cleanly_when_its_blobs_were_swept(store: Store) -> None:
    shared = random_files(2)
    old = snapshot_of(store, shared, "old")
    store.catalog.forget_snapshots([old.id])
    w = store.writer()
    from lamina.store import blob

    entries = []
    for name, data in shared.items():
        cid = blob.blob_id(store.keys.chunking.id_key, data)
        assert not w.need([cid])
        entries.append(Entry(name=name, type="file", size=len(data), content=[cid]))
    _gc(store)  # full collection sweeps them
    root = w.put(BlobKind.TREE, encode_tree(entries))
    rec = SnapshotRecord("", dt.datetime.now(dt.UTC), "new", root, 2, 0, {})
    with pytest.raises(MissingDataError, match="run the backup again"):
        w.commit_snapshot(rec, lambda r: walk_blobs(store, r))
    w.close()
    assert store.catalog.snapshots("new") == []


def test_gc_concurrent_with_writers_never_loses_committed_data(store: Store) -> None:
    shared = random_files(10, 20_000)
    errors: list[BaseException] = []
    committed: list[SnapshotRecord] = []
    stop = threading.Event()

    def writer_loop(k: int) -> None:
        i = 0
        while not stop.is_set() and i < 15:
            files = dict(shared)
            files[f"own{k}-{i}".encode()] = os.urandom(5000)
            try:
                committed.append(snapshot_of(store, files, f"w{k}"))
            except MissingDataError:
                pass  # a clean refusal is allowed; silent loss is not
            except BaseException as e:
                errors.append(e)
            i += 1

    threads = [threading.Thread(target=writer_loop, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for _ in range(6):
        snaps = store.catalog.snapshots()
        if len(snaps) > 2:
            store.catalog.forget_snapshots([s.id for s in snaps[:-2]])
        _gc(store)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert committed, "every commit was refused: the test proved nothing"
    kept = {s.id for s in store.catalog.snapshots()}
    assert kept & {s.id for s in committed}, "no committed snapshot survived to be checked"
    for snap in committed:
        if snap.id in kept:
            _restorable(store, snap)
    _gc(store)
    rep = check(store, [snapshot_roots(store.catalog)], references, read_data=True)
    assert rep.ok, rep.errors


def test_snapshot_committed_between_mark_and_condemn_keeps_everything(store: Store) -> None:
    """The collector's second look must walk trees it has just condemned (found by the
    concurrent test: their chunks were swept under a committed snapshot)."""
    shared = random_files(3)
    old = snapshot_of(store, shared, "old")
    store.catalog.forget_snapshots([old.id])
    made: list[SnapshotRecord] = []
    condemn = store.catalog.condemn

    def condemn_after_a_commit(ids, max_seq, copies=(), **kw):  # type: ignore[no-untyped-def]
        if not made:  # a backup of the same files commits right after the mark
            made.append(snapshot_of(store, shared, "new"))
        return condemn(ids, max_seq, copies, **kw)

    store.catalog.condemn = condemn_after_a_commit  # type: ignore[method-assign]
    _gc(store)
    store.catalog.condemn = condemn  # type: ignore[method-assign]
    assert made[0].root == old.root  # the very tree the collector condemned
    _restorable(store, made[0])
    rep = check(store, [snapshot_roots(store.catalog)], references, read_data=True)
    assert rep.ok, rep.errors


def test_gc_frees_copies_stored_by_concurrent_writers(store: Store) -> None:
    data = os.urandom(50_000)
    a, b = store.writer(), store.writer()
    bid_a, bid_b = a.put(BlobKind.DATA, data), b.put(BlobKind.DATA, data)  # both saw it missing
    a.close()
    b.close()
    assert bid_a == bid_b
    assert len([r for r in store.catalog.iter_blobs() if r.id == bid_a]) == 2
    snap = snapshot_of(store, {b"f": data})
    rep = _gc(store)
    assert rep.duplicates == 1
    assert len([r for r in store.catalog.iter_blobs() if r.id == bid_a]) == 1
    _restorable(store, snap)
    assert check(store, [snapshot_roots(store.catalog)], references, read_data=True).ok


def test_rescue_walks_subtrees_the_collector_condemned(store: Store) -> None:
    """A new snapshot reusing an old folder whose tree was condemned must still commit."""
    with store.writer() as w:
        cid = w.put(BlobKind.DATA, os.urandom(20_000))
        sub = w.put(
            BlobKind.TREE, encode_tree([Entry(name=b"f", type="file", size=20_000, content=[cid])])
        )
        root = w.put(BlobKind.TREE, encode_tree([Entry(name=b"d", type="dir", subtree=sub)]))
        old = w.commit_snapshot(
            SnapshotRecord("", dt.datetime.now(dt.UTC), "old", root, 1, 0, {}),
            lambda r: walk_blobs(store, r),
        )
    store.catalog.forget_snapshots([old.id])
    w = store.writer()
    # the writer reuses the folder's tree as it is (need asks per kind: one blob, one kind)
    assert not w.need([cid]) and not w.need([sub], BlobKind.TREE)
    store.catalog.condemn({r.id for r in store.catalog.iter_blobs()}, store.catalog.max_pack_seq())
    new_root = w.put(BlobKind.TREE, encode_tree([Entry(name=b"e", type="dir", subtree=sub)]))
    snap = w.commit_snapshot(
        SnapshotRecord("", dt.datetime.now(dt.UTC), "new", new_root, 1, 0, {}),
        lambda r: walk_blobs(store, r),
    )
    w.close()
    assert store.catalog.missing([sub, cid]) == set()  # rescued, not just read
    _gc(store)
    _restorable(store, snap)


def _small_live_packs(store: Store, n: int) -> list[SnapshotRecord]:
    """``n`` snapshots of one 20 KB file each: ``n`` small packs, all live."""
    return [snapshot_of(store, random_files(1, 20_000), f"s{i}") for i in range(n)]


def test_gc_repacks_small_packs_together_into_full_ones(store: Store) -> None:
    snaps = _small_live_packs(store, 14)  # 14 x 20 KB, pack size 256 KiB
    dry = _gc(store, dry_run=True)
    assert dry.packs_repacked == 14 and {r.reason for r in dry.repack} == {"small"}
    assert len(store.catalog.packs()) == 14
    rep = _gc(store)
    assert rep.packs_repacked == 14
    sizes = sorted(p.size for p in store.catalog.packs())
    assert len(sizes) == 2 and sizes[-1] >= store.pack_size, sizes
    for s in snaps:
        _restorable(store, s)
    assert check(store, [snapshot_roots(store.catalog)], references, read_data=True).ok


def test_a_lone_small_pack_is_left_alone(store: Store) -> None:
    _small_live_packs(store, 1)
    assert _gc(store, dry_run=True).repack == []


@pytest.mark.parametrize("n", range(1 + 3 * 4))
def test_gc_repack_crash_at_any_step_loses_nothing(store: Store, n: int) -> None:
    snaps = _small_live_packs(store, 4)
    with pytest.raises(InjectedCrash):
        _gc(store, fail_after=n)
    for s in snaps:
        _restorable(store, s)
    assert check(store, [snapshot_roots(store.catalog)], references, read_data=True).ok
    _gc(store, orphan_grace=dt.timedelta(0))  # the next run finishes the job
    for s in snaps:
        _restorable(store, s)
    assert check(store, [snapshot_roots(store.catalog)], references, read_data=True).ok
    assert [p.state for p in store.catalog.packs()] == ["ok"]
    assert {n for n, _ in store.backend.list("packs/")} == {
        pack_object_name(p.name) for p in store.catalog.packs()
    }


@pytest.mark.parametrize("failing", ["the mark of the new snapshot", "the look after the condemn"])
def test_a_gc_stopped_after_a_snapshot_landed_mid_collection_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A snapshot commits between the gc's mark and its condemn (under the old epoch: its
    writer rescues nothing), and the gc then stops (an error here; a kill, an OOM, a power
    loss alike): no row the snapshot names may be left condemned, for the next roll of
    small packs sweeps condemned rows without a second look. Before session 23 the condemn
    came first and the new snapshot's mark after, and the roll deleted its data
    (the crash audit's finding 1). On the server's catalog (SQLite), as the server opens
    its store."""
    init_store(StoreLocation(data=tmp_path / "data")).close()
    s = open_store(StoreLocation(data=tmp_path / "data"), pack_size=256 * 1024)
    try:
        files = random_files(3, 60_000)
        ids = {}
        for name, data in files.items():  # an agent's bundles (small packs), no snapshot yet
            with s.writer() as w:
                ids[name] = w.put(BlobKind.DATA, data)
        entries = [
            Entry(name=n, type="file", size=len(d), content=[ids[n]]) for n, d in files.items()
        ]
        with s.writer() as w:
            root = w.put(BlobKind.TREE, encode_tree(entries))
        made: list[SnapshotRecord] = []
        condemn = s.catalog.condemn

        def commit_then_condemn(*a, **kw):  # type: ignore[no-untyped-def]
            if not made:  # the agent's commit lands between the mark and the condemn
                with s.writer() as w:
                    record = SnapshotRecord("", dt.datetime.now(dt.UTC), "cvd", root, 3, 0, {})
                    made.append(w.commit_snapshot(record, lambda r: walk_blobs(s, r)))
            return condemn(*a, **kw)

        monkeypatch.setattr(s.catalog, "condemn", commit_then_condemn)
        real_mark, calls = gc_module.mark, []

        def mark(*a, **kw):  # type: ignore[no-untyped-def]
            calls.append(1)
            stop = 2 if failing == "the mark of the new snapshot" else 3
            if len(calls) == stop:
                raise BackendError("database busy: no write turn within 60 s")
            return real_mark(*a, **kw)

        monkeypatch.setattr(gc_module, "mark", mark)
        with pytest.raises(BackendError):
            collect(s, all_roots(s), references)
        monkeypatch.undo()
        assert made and len(calls) == (2 if failing == "the mark of the new snapshot" else 3)
        assert check(s, all_roots(s), references, read_data=True).ok
        assert roll_small(s, force=True) is not None  # the sweep without a second look
        _restorable(s, made[0])
        rep = check(s, all_roots(s), references, read_data=True)
        assert rep.ok, rep.errors
    finally:
        s.close()


_HOLD = """
import sys
from pathlib import Path
from lamina.db.location import StoreLocation
from lamina.db.stores import open_store
from lamina.processes import lock_holder
import datetime as dt
s = open_store(StoreLocation(data=Path(sys.argv[1])))
assert s.catalog.try_lock("gc", lock_holder(), dt.timedelta(hours=6))
print("held", flush=True)
if sys.argv[2] == "stay":
    sys.stdin.read()  # until the parent closes it
# else: ends holding it, as a killed gc would (no unlock)
"""


def test_a_collectors_lock_outlives_it_only_while_its_process_lives(tmp_path: Path) -> None:
    """A gc (or a roll of small packs) killed holding the store's lock left it held for
    its time to live (6 h for a gc), refusing every gc meanwhile (the crash audit's
    finding 2): the lock names its holder's process (``processes.lock_holder``), and the
    next gc takes over the lock of a process that has ended, not that of a live one."""
    data = tmp_path / "data"
    init_store(StoreLocation(data=data)).close()
    live = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(data), "stay"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout is not None and live.stdout.readline() == "held\n"
        s = open_store(StoreLocation(data=data))
        with pytest.raises(StoreBusyError):
            collect(s, all_roots(s), references)
        assert roll_small(s, force=True) is None  # (the roll waits for it too)
        s.close()
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait()
    # Its holder has ended without unlocking: the lock is taken over at once.
    s = open_store(StoreLocation(data=data))
    try:
        report = collect(s, all_roots(s), references)
        assert report.condemned == 0
    finally:
        s.close()
    ended = subprocess.run(
        [sys.executable, "-c", _HOLD, str(data), "end"], capture_output=True, text=True
    )
    assert ended.stdout == "held\n", ended.stderr
    s = open_store(StoreLocation(data=data))
    try:
        collect(s, all_roots(s), references)
    finally:
        s.close()


def _unnamed_pack_files(store: Store) -> set[str]:
    named = {pack_object_name(p.name) for p in store.catalog.packs()}
    return {name for name, _ in store.backend.list("packs/")} - named


def test_a_pack_whose_file_outlived_its_rows_stays_named_until_the_collector_removes_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A roll (or a gc) stopped after an old pack's rows are gone and before its file is
    deleted left a file no row named, which nothing ever removed (the crash audit's
    finding 3): the pack's row now stays, ``writing``, until the file is gone, so the
    collector removes it as an orphan."""
    snaps = _small_live_packs(store, 3)
    finish = store.catalog.finish_repack

    def then_stopped(old: str, moved: Collection[bytes]) -> bool:
        finish(old, moved)  # its transaction committed: the process dies right after
        raise InjectedCrash(f"stopped after dropping the rows of {old}")

    monkeypatch.setattr(store.catalog, "finish_repack", then_stopped)
    with pytest.raises(InjectedCrash):
        roll_small(store, force=True)
    monkeypatch.setattr(store.catalog, "finish_repack", finish)
    assert _unnamed_pack_files(store) == set()
    writing = [p for p in store.catalog.packs() if p.state == "writing"]
    assert len(writing) == 1
    _gc(store, orphan_grace=dt.timedelta(0))
    assert _unnamed_pack_files(store) == set()
    assert pack_object_name(writing[0].name) not in {n for n, _ in store.backend.list("packs/")}
    for snap in snaps:
        _restorable(store, snap)


def test_the_collector_removes_temporary_files_of_writes_killed_before_their_rename(
    store: Store,
) -> None:
    """``write_atomic`` writes ``.NAME.RANDOM.tmp`` and renames it: a writer killed before
    the rename left a hidden file no listing shows and nothing removed (the crash audit's
    finding 4). A gc removes those older than the orphans' grace, not a live writer's."""
    snap = snapshot_of(store, random_files(1), "s")
    [(name, _)] = list(store.backend.list("packs/"))
    folder = store.backend.root / name.rsplit("/", 1)[0]  # type: ignore[attr-defined]
    stale, fresh = folder / ".abc.0123.tmp", folder / ".def.4567.tmp"
    stale.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    report = _gc(store)  # (the grace: an hour)
    assert not stale.exists() and fresh.exists()
    assert "removed 1 temporary files of interrupted writes" in report.notes
    _restorable(store, snap)


def test_a_gc_ends_while_snapshots_keep_landing_and_loses_none_of_them(store: Store) -> None:
    """A snapshot committed before every try of the condemn (a busy fleet) made the gc try
    again for as long as they came: the last try marks them with the epoch locked."""
    old = snapshot_of(store, random_files(2), "old")
    store.catalog.forget_snapshots([old.id])  # something for the gc to condemn
    made: list[SnapshotRecord] = []
    condemn = store.catalog.condemn

    def after_a_commit(*a, **kw):  # type: ignore[no-untyped-def]
        assert len(made) < 3 * gc_module.CONDEMN_TRIES, "the gc does not end"
        made.append(snapshot_of(store, random_files(1, 5_000), f"busy{len(made)}"))
        return condemn(*a, **kw)

    store.catalog.condemn = after_a_commit  # type: ignore[method-assign]
    try:
        report = _gc(store)
    finally:
        store.catalog.condemn = condemn  # type: ignore[method-assign]
    assert len(made) == gc_module.CONDEMN_TRIES and report.condemned > 0
    for snap in made:
        _restorable(store, snap)
    rep = check(store, [snapshot_roots(store.catalog)], references, read_data=True)
    assert rep.ok, rep.errors


def test_a_short_orphan_grace_never_loses_a_pack_a_writer_is_committing(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--orphan-grace 0s`` on a store a writer is writing to: the gc takes the writer's
    pack (written, not yet committed) as an orphan. It deleted the file and dropped the
    row, and the writer's commit then indexed a pack that was gone: acknowledged data
    lost (the crash audit's S3). Now the gc takes the pack first, while it is still
    ``writing``, and the writer's commit is refused: nothing is acknowledged, the store
    checks, and the content is stored again by the next write."""
    written, gc_done = threading.Event(), threading.Event()
    original = type(any_store.catalog).commit_pack

    def slow_commit(self: object, name: str, size: int, entries: object) -> None:
        written.set()  # the pack's file is written; its commit waits for the gc
        assert gc_done.wait(60)
        original(self, name, size, entries)  # type: ignore[arg-type]

    monkeypatch.setattr(type(any_store.catalog), "commit_pack", slow_commit)
    content = os.urandom(50_000)
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            with any_store.writer() as w:
                w.put(BlobKind.DATA, content)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=write)
    t.start()
    assert written.wait(60)
    rep = _gc(any_store, orphan_grace=dt.timedelta(0))
    gc_done.set()
    t.join(60)
    assert rep.orphans_deleted == 1
    [err] = outcome
    assert isinstance(err, StoreBusyError) and "removed by a garbage collection" in str(err)
    assert check(any_store, [snapshot_roots(any_store.catalog)], references, read_data=True).ok
    monkeypatch.undo()
    with any_store.writer() as w:  # written again: stored
        bid = w.put(BlobKind.DATA, content)
    assert any_store.get(bid) == content
