"""The files cache: unchanged files are not read again, and nothing stale is trusted."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import msgpack
import pytest

from lamina.store.catalog import SnapshotRecord
from lamina.store.gc import collect
from lamina.store.repository import Store
from lamina.store.roots import snapshot_roots
from lamina.tree import cache as cache_mod
from lamina.tree import scan as scan_mod
from lamina.tree.backup import BackupResult, backup, walk_blobs
from lamina.tree.cache import FilesCache
from lamina.tree.model import decode_tree, references
from lamina.tree.restore import restore_tree

from .treeutil import MIB, MTIME, assert_same_tree, write


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for i in range(6):
        write(root / f"top{i}.txt", f"top file {i}\n".encode() * (i + 1), MTIME + i)
    write(root / "d" / "e" / "deep.txt", b"deep\n", MTIME + 10)
    write(root / "d" / "mid.bin", os.urandom(2 * MIB), MTIME + 11)  # above SMALL_FILE: own job
    write(root / "d" / "e" / "empty", b"", MTIME + 12)
    return root


class PreadCounter:
    """Counts os.pread and os.preadv calls made by the scanner (every content read goes
    through one of them: a small file's, and a larger one's into the reused buffer)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[int] = []
        real, real_v = scan_mod.os.pread, scan_mod.os.preadv

        def pread(fd: int, n: int, off: int) -> bytes:
            self.calls.append(fd)
            return real(fd, n, off)

        def preadv(fd: int, buffers: list[memoryview], off: int) -> int:
            self.calls.append(fd)
            return real_v(fd, buffers, off)

        monkeypatch.setattr(scan_mod.os, "pread", pread)
        monkeypatch.setattr(scan_mod.os, "preadv", preadv)


def run_backup(store: Store, src: Path, cache: Path) -> BackupResult:
    return backup(store, src, cache_path=cache, workers=2)


def cached_names(cache: Path, store: Store, dirpath: bytes) -> set[bytes]:
    c = FilesCache(cache, store.keys.store_id, store.catalog.gc_epoch())
    try:
        return set(c.directory(dirpath))
    finally:
        c.close()


def restore_and_compare(store: Store, snap: SnapshotRecord, src: Path, out: Path) -> None:
    st = restore_tree(store, snap.root, out)
    assert st.errors == []
    assert_same_tree(src, out)


N_FILES = 9  # 6 top files, deep.txt, mid.bin, empty


def test_unchanged_rescan_reads_nothing(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache.db"
    first = run_backup(store, src, cache)
    assert first.stats.files_read == N_FILES and first.stats.errors == []

    reads = PreadCounter(monkeypatch)
    second = run_backup(store, src, cache)
    assert second.stats.files_read == 0
    assert second.stats.bytes_read == 0
    assert second.stats.files_unchanged == N_FILES
    assert reads.calls == []
    assert second.snapshot.root == first.snapshot.root
    assert second.stats.files == first.stats.files and second.stats.bytes == first.stats.bytes
    restore_and_compare(store, second.snapshot, src, tmp_path / "out")


def test_without_a_cache_everything_is_read(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pread counter really sees the scanner's reads (so its zero above means something)."""
    backup(store, src)
    reads = PreadCounter(monkeypatch)
    again = backup(store, src)
    assert again.stats.files_read == N_FILES
    assert len(reads.calls) >= N_FILES - 1  # every non-empty file


def test_changed_file_is_read_again(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache.db"
    run_backup(store, src, cache)
    write(src / "d" / "e" / "deep.txt", b"changed and longer\n", MTIME + 100)
    reads = PreadCounter(monkeypatch)
    r = run_backup(store, src, cache)
    assert r.stats.files_read == 1 and r.stats.files_unchanged == N_FILES - 1
    assert len(reads.calls) == 1
    restore_and_compare(store, r.snapshot, src, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "e" / "deep.txt").read_bytes() == b"changed and longer\n"

    # and the cache now holds the new version: nothing read on the next run
    assert run_backup(store, src, cache).stats.files_read == 0


def test_a_changed_folder_writes_only_its_new_rows_and_keeps_the_others(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file changed and one deleted among a folder's six: one row written, one dropped;
    the other rows stay as they were and are trusted on the next scan."""
    cache = tmp_path / "cache.db"
    run_backup(store, src, cache)
    write(src / "top3.txt", b"changed\n", MTIME + 100)
    os.unlink(src / "top2.txt")
    written: list[bytes] = []
    real_put = FilesCache.put

    def put(self: FilesCache, dirpath: bytes, name: bytes, *a: object, **kw: object) -> None:
        written.append(name)
        real_put(self, dirpath, name, *a, **kw)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(FilesCache, "put", put)
        r = run_backup(store, src, cache)
    assert r.stats.files_read == 1 and written == [b"top3.txt"]
    top = {f"top{i}.txt".encode() for i in range(6)} - {b"top2.txt"}
    assert cached_names(cache, store, b"") == top
    again = run_backup(store, src, cache)
    assert again.stats.files_read == 0 and again.stats.files_unchanged == N_FILES - 1
    restore_and_compare(store, again.snapshot, src, tmp_path / "out")


def test_same_size_same_mtime_change_is_caught_by_ctime(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """An edit that keeps size and mtime (e.g. touch -r afterwards) still changes the ctime."""
    cache = tmp_path / "cache.db"
    run_backup(store, src, cache)
    p = src / "top3.txt"
    old = p.read_bytes()
    write(p, old.upper(), MTIME + 3)  # same size, mtime set back
    assert len(old.upper()) == len(old) and os.stat(p).st_mtime_ns == MTIME + 3
    r = run_backup(store, src, cache)
    assert r.stats.files_read == 1
    restore_and_compare(store, r.snapshot, src, tmp_path / "out")


def test_replaced_file_with_same_stat_but_new_inode_is_read(
    store: Store, src: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache.db"
    run_backup(store, src, cache)
    p = src / "top1.txt"
    data = p.read_bytes()
    os.rename(p, tmp_path / "keep-inode-busy")  # so the new file cannot reuse the inode
    write(p, data.swapcase(), MTIME + 1)
    r = run_backup(store, src, cache)
    assert r.stats.files_read == 1
    restore_and_compare(store, r.snapshot, src, tmp_path / "out")


def test_deleted_file_disappears(store: Store, src: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.db"
    run_backup(store, src, cache)
    assert b"top2.txt" in cached_names(cache, store, b"")
    os.unlink(src / "top2.txt")
    os.unlink(src / "d" / "e" / "empty")
    r = run_backup(store, src, cache)
    assert r.stats.files_read == 0
    assert r.stats.files == N_FILES - 2
    names = [e.name for e in decode_tree(store.get(r.snapshot.root))]
    assert b"top2.txt" not in names
    assert b"top2.txt" not in cached_names(cache, store, b"")
    assert cached_names(cache, store, b"d/e") == {b"deep.txt"}
    restore_and_compare(store, r.snapshot, src, tmp_path / "out")


def test_new_file_is_read_and_others_are_not(store: Store, src: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.db"
    run_backup(store, src, cache)
    write(src / "d" / "new.txt", b"new\n", MTIME + 50)
    r = run_backup(store, src, cache)
    assert r.stats.files_read == 1 and r.stats.files_unchanged == N_FILES
    restore_and_compare(store, r.snapshot, src, tmp_path / "out")


def test_failed_backup_leaves_cache_as_of_last_snapshot(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries of a scan whose snapshot was never committed must not be trusted later."""
    cache = tmp_path / "cache.db"
    run_backup(store, src, cache)
    write(src / "top0.txt", b"version two\n", MTIME + 200)

    from lamina.store import repository

    def fail(*a: object, **kw: object) -> None:
        raise RuntimeError("crash before the snapshot row")

    with monkeypatch.context() as m:
        m.setattr(repository.Writer, "commit_snapshot", fail)
        with pytest.raises(RuntimeError):
            run_backup(store, src, cache)
    # The cache must still describe the first snapshot: top0 is read again.
    r = run_backup(store, src, cache)
    assert r.stats.files_read == 1
    restore_and_compare(store, r.snapshot, src, tmp_path / "out")


def _chunks_of(store: Store, root: bytes, name: bytes) -> list[bytes]:
    (e,) = [x for x in decode_tree(store.get(root)) if x.name == name]
    return list(e.chunk_ids())


def test_cache_entry_with_collected_chunks_is_not_trusted(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache.db"
    first = run_backup(store, src, cache)
    victim = _chunks_of(store, first.snapshot.root, b"top4.txt")
    assert victim
    epoch = store.catalog.gc_epoch()
    assert store.catalog.condemn(victim, store.catalog.max_pack_seq()) == epoch + 1
    assert store.catalog.missing(victim) == set(victim)

    reads = PreadCounter(monkeypatch)
    second = run_backup(store, src, cache)
    assert second.stats.files_read == 1  # top4.txt, and only it
    assert len(reads.calls) == 1
    assert second.stats.files_unchanged == N_FILES - 1
    assert store.catalog.missing(victim) == set()  # uploaded again
    restore_and_compare(store, second.snapshot, src, tmp_path / "out")

    # the cache is fresh again under the new epoch
    third = run_backup(store, src, cache)
    assert third.stats.files_read == 0


def test_everything_collected_then_rescan_is_restorable_after_a_real_gc(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """Forget the only snapshot and collect: every chunk and tree is really gone."""
    cache = tmp_path / "cache.db"
    first = run_backup(store, src, cache)
    old_blobs = list(walk_blobs(store, first.snapshot.root))
    store.catalog.forget_snapshots([first.snapshot.id])
    rep = collect(store, [snapshot_roots(store.catalog)], references)
    assert rep.packs_deleted >= 1
    assert store.catalog.missing(old_blobs) == set(old_blobs)

    second = run_backup(store, src, cache)
    # every file is read again except the empty one, which names no chunk
    assert second.stats.files_read == N_FILES - 1 and second.stats.files_unchanged == 1
    assert second.stats.errors == []
    restore_and_compare(store, second.snapshot, src, tmp_path / "out")
    assert store.catalog.missing(list(walk_blobs(store, second.snapshot.root))) == set()


def test_rows_of_a_folder_away_during_a_gc_are_not_trusted_later(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """A folder moved away (or excluded) while a gc collects its chunks, then moved back.

    Its files keep inode, size, mtime and ctime, so their old cache rows match; the
    chunks those rows name were collected. They must be read again, not trusted.
    """
    cache = tmp_path / "cache.db"
    first = run_backup(store, src, cache)
    parked = tmp_path / "parked"
    os.rename(src / "d", parked)
    run_backup(store, src, cache)  # d is away: its rows are left alone
    store.catalog.forget_snapshots([first.snapshot.id])
    collect(store, [snapshot_roots(store.catalog)], references)  # d's chunks go
    third = run_backup(store, src, cache)  # runs under the new gc epoch
    assert third.stats.errors == []
    os.rename(parked, src / "d")

    fourth = run_backup(store, src, cache)
    assert fourth.stats.errors == []
    assert store.catalog.missing(list(walk_blobs(store, fourth.snapshot.root))) == set()
    assert fourth.stats.files_read == 3  # all of d: its rows were dropped
    restore_and_compare(store, fourth.snapshot, src, tmp_path / "out")


def test_rows_of_an_excluded_folder_are_not_trusted_after_a_gc(
    store: Store, src: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache.db"

    def without_d(rel: bytes, is_dir: bool) -> bool:
        return rel == b"d"

    first = run_backup(store, src, cache)
    backup(store, src, cache_path=cache, exclude=without_d)
    store.catalog.forget_snapshots([first.snapshot.id])
    collect(store, [snapshot_roots(store.catalog)], references)
    backup(store, src, cache_path=cache, exclude=without_d)
    last = run_backup(store, src, cache)
    assert store.catalog.missing(list(walk_blobs(store, last.snapshot.root))) == set()
    restore_and_compare(store, last.snapshot, src, tmp_path / "out")


def _xattrs_of(store: Store, root: bytes, name: bytes) -> list[tuple[bytes, bytes]]:
    return next(e.xattrs for e in decode_tree(store.get(root)) if e.name == name)


def test_unchanged_file_keeps_its_xattrs_from_the_cache_and_a_new_value_is_seen(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hit lists no xattrs (they come from the cache, v2); setting one moves the ctime."""
    cache = tmp_path / "cache.db"
    os.setxattr(src / "top0.txt", "user.comment", b"first")
    first = run_backup(store, src, cache)
    assert _xattrs_of(store, first.snapshot.root, b"top0.txt") == [(b"user.comment", b"first")]

    listed: list[object] = []
    real = scan_mod.os.listxattr

    def listxattr(path: object = None, **kw: bool) -> list[str]:
        listed.append(path)
        return real(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scan_mod.os, "listxattr", listxattr)
    second = run_backup(store, src, cache)
    assert second.stats.files_unchanged == N_FILES
    assert second.snapshot.root == first.snapshot.root  # the xattr is in the tree still
    assert not [p for p in listed if isinstance(p, bytes) and p.endswith(b"/top0.txt")]
    assert listed  # the counter sees the scan's calls (folders still list theirs)

    os.setxattr(src / "top0.txt", "user.comment", b"second")
    third = run_backup(store, src, cache)
    assert third.stats.files_read == 1
    assert _xattrs_of(store, third.snapshot.root, b"top0.txt") == [(b"user.comment", b"second")]


def test_the_rows_are_written_by_the_cache_thread_not_the_walks(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk only queues its rows: SQLite's inserts run on the cache's own thread
    (and connection), so they do not hold the walk's core; at most WRITES_IN_FLIGHT
    batches are queued at once."""
    writers: set[int] = set()
    in_flight: list[int] = []
    real_write, real_flush = cache_mod.FilesCache._write, cache_mod.FilesCache._flush

    def write_rows(self: FilesCache, batches: list[tuple[str, list[object]]]) -> None:
        writers.add(threading.get_ident())
        real_write(self, batches)

    def flush(self: FilesCache, wait: bool = False) -> None:
        real_flush(self, wait)
        in_flight.append(len(self._writes))

    monkeypatch.setattr(cache_mod.FilesCache, "_write", write_rows)
    monkeypatch.setattr(cache_mod.FilesCache, "_flush", flush)
    c = FilesCache(tmp_path / "rows.db", store.keys.store_id, 0)
    st = os.stat(src / "top0.txt")
    for i in range(5 * 2000):
        c.put(b"d", b"f%05d" % i, st, [b"\0" * 32])
    c.commit(0)
    c.close()
    assert writers and threading.get_ident() not in writers
    assert max(in_flight) <= cache_mod.WRITES_IN_FLIGHT
    assert len(cached_names(tmp_path / "rows.db", store, b"d")) == 5 * 2000


def test_a_cache_that_cannot_be_written_fails_the_backup_before_its_snapshot(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write the cache's thread failed is raised before the snapshot is committed (as
    when the walk wrote its rows itself); the cache stays as of the last snapshot."""
    cache = tmp_path / "cache.db"
    run_backup(store, src, cache)
    write(src / "top0.txt", b"version two\n", MTIME + 200)
    snapshots = len(store.catalog.snapshots())

    def full(db: sqlite3.Connection, batches: list[tuple[str, list[object]]]) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as m:
        m.setattr(cache_mod, "_write_rows", full)
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            run_backup(store, src, cache)
        assert len(store.catalog.snapshots()) == snapshots
        # the same from the writing thread (a scan of more rows than one batch)
        c = FilesCache(tmp_path / "rows.db", store.keys.store_id, 0)
        st = os.stat(src / "top0.txt")
        for i in range(2001):
            c.put(b"d", b"f%05d" % i, st, [b"\0" * 32])
        assert c._writer is not None
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            c.settle()
        c.close()
    r = run_backup(store, src, cache)
    assert r.stats.files_read == 1
    restore_and_compare(store, r.snapshot, src, tmp_path / "out")


def test_a_signature_row_is_schema_4_s_row_made_in_one_pass(tmp_path: Path) -> None:
    # The listing's signature is a schema 4 format: the rows must stay these fields in this
    # order (a cache of version 4 written before holds signatures of them).
    write(tmp_path / "f", b"data", MTIME)
    st = os.lstat(tmp_path / "f")
    user, group = {st.st_uid: "u"}, {st.st_gid: "g"}
    rows = cache_mod.signature_rows([(b"f", st, "file")], user, group)
    ids = [getattr(st, f"st_{k}") for k in ("mode", "ino", "dev", "nlink", "uid", "gid")]
    times = [getattr(st, f"st_{k}") for k in ("size", "mtime_ns", "ctime_ns", "rdev")]
    assert rows == [(b"f", *ids, "u", "g", *times)]
    assert cache_mod.rows_signature(rows) == cache_mod.rows_signature([tuple(rows[0])])


def test_a_files_row_is_packed_without_a_packer_per_file(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``put`` packs each file's content and xattrs with the cache's one packer (not a new
    one per file, as ``msgpack.packb`` makes); the rows read back are the files' own."""
    made: list[object] = []
    real = msgpack.Packer

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, **kw: object) -> None:
            made.append(self)
            super().__init__(**kw)

    monkeypatch.setattr(msgpack, "Packer", Counting)
    c = FilesCache(tmp_path / "rows.db", store.keys.store_id, 0)
    made.clear()
    st = os.stat(src / "top0.txt")
    for i in range(100):
        c.put(b"d", b"f%03d" % i, st, [bytes([i]) * 32, 7], [(b"user.k", b"v%d" % i)])
    assert made == []
    c.commit(0)
    c.close()
    c = FilesCache(tmp_path / "rows.db", store.keys.store_id, 0)
    rows = c.files_named(b"d", [b"f005", b"f099"])
    c.close()
    assert rows[b"f005"].content == [b"\x05" * 32, 7]
    assert rows[b"f099"].xattrs == [(b"user.k", b"v99")]
