"""A rebuilt folder's unchanged entries come from its cache row (files cache schema 4):
no files row read, no entry made or encoded again; never from a damaged row or one whose
entry changed. The oracle: the root a scan without any cache gives."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgpack
import pytest

from lamina.store.repository import Store
from lamina.tree.cache import FilesCache
from lamina.tree.model import Entry, encode_tree
from lamina.tree.scan_entries import encode_folder

from .test_tree_reuse import TREE_OF, _rows, check, make_src, run
from .treeutil import MTIME, scan_tree, write


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_src(tmp_path)


class Calls:
    """Counts ``FilesCache.files`` (a folder's files rows read) and ``Entry.encode``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: list[bytes] = []
        self.encoded: list[bytes] = []
        files, encode = FilesCache.files, Entry.encode
        monkeypatch.setattr(
            FilesCache, "files", lambda c, d: (self.files.append(d), files(c, d))[1]
        )
        monkeypatch.setattr(Entry, "encode", lambda e: (self.encoded.append(e.name), encode(e))[1])


def test_a_rebuilt_folder_takes_its_unchanged_entries_from_its_row(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache.db"
    first = run(store, src, cache)
    write(src / "a" / "b" / "c" / "three.txt", b"changed\n", MTIME + 3)
    calls = Calls(monkeypatch)
    r = run(store, src, cache)
    # the root, a, a/b and a/b/c are built again: only the changed file and the
    # sub-folders' entries (their tree ids moved) are encoded; no files row is read
    assert sorted(calls.encoded) == [b"a", b"b", b"c", b"three.txt", b"z"]
    assert calls.files == []
    assert (r.stats.files_read, r.stats.trees_reused) == (1, 1)  # z
    assert (r.stats.files, r.stats.others) == (first.stats.files, first.stats.others)
    assert r.stats.bytes == first.stats.bytes - len(b"three\n" * 30) + len(b"changed\n")
    check(store, src, r, tmp_path / "out")


def test_an_entry_that_changed_is_built_not_taken_from_the_row(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    os.chmod(src / "a" / "one.txt", 0o600)  # a new ctime and mode, the same content
    (src / "a" / "link").unlink()
    os.symlink("z", src / "a" / "link")  # a new target
    calls = Calls(monkeypatch)
    r = run(store, src, cache)
    assert sorted(calls.encoded) == [b"a", b"b", b"link", b"one.txt", b"z"]
    assert r.stats.files_read == 1  # one.txt: its ctime moved
    check(store, src, r, tmp_path / "out")


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE dir_entries SET entries = zeroblob(40)",
        "UPDATE dir_entries SET entries = substr(entries, 1, length(entries) - 1) || x'ff'",
        "UPDATE dir_entries SET entries = 'text'",
    ],
)
def test_a_damaged_entries_blob_is_never_used(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    _rows(cache, f"{damage} WHERE tree = ({TREE_OF % 'a'})")
    c = FilesCache(cache, store.keys.store_id, store.catalog.gc_epoch())
    try:
        assert c.folder_entries(b"a") is None
        assert c.folder_entries(b"a/b") is not None
    finally:
        c.close()
    write(src / "a" / "new.txt", b"new\n", MTIME)
    calls = Calls(monkeypatch)
    r = run(store, src, cache)
    assert calls.files == [b"a"]  # built from its files rows
    assert b"one.txt" in calls.encoded
    assert r.stats.files_read == 1
    check(store, src, r, tmp_path / "out")


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 65535, 65536])
def test_encode_folder_gives_encode_tree_s_bytes(n: int) -> None:
    entries = [Entry(name=b"f%06d" % i, type="file", size=i, content=[]) for i in range(n)]
    reused = {e.name: encode_folder([e], {})[1][e.name] for e in entries[::3]}
    built = [e for e in entries if e.name not in reused]
    tree, encoded = encode_folder(built, reused)
    assert tree == encode_tree(entries)
    assert sorted(encoded) == [e.name for e in entries]


def test_entries_written_by_a_scan_never_committed_are_not_reached_and_go(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """A folder's entries are written beside the walk, keyed by the tree they encode; a
    scan killed before its commit leaves rows no folder row names: never read, and gone
    at the next commit."""
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    write(src / "a" / "one.txt", b"changed\n", MTIME + 1)
    c = FilesCache(cache, store.keys.store_id, store.catalog.gc_epoch())
    try:
        scan_tree(store, src, c)
        c.settle()  # written, as by a run killed just before its snapshot's commit
    finally:
        c.close()
    db = sqlite3.connect(cache)
    orphans = "SELECT count(*) FROM dir_entries WHERE tree NOT IN (SELECT tree FROM dirs)"
    assert db.execute(orphans).fetchone()[0] == 2  # a and the root
    r = run(store, src, cache)
    assert r.stats.files_read == 1
    check(store, src, r, tmp_path / "out")
    assert db.execute(orphans).fetchone()[0] == 0
    db.close()


def test_encode_folder_packs_a_folders_entries_with_one_packer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One msgpack packer a folder, not one an entry (``msgpack.packb`` makes a new one
    per call); the bytes are ``encode_tree``'s."""
    made: list[object] = []
    real = msgpack.Packer

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, **kw: object) -> None:
            made.append(self)
            super().__init__(**kw)

    entries = [Entry(name=b"f%03d" % i, type="file", size=i, content=[]) for i in range(100)]
    expected = encode_tree(entries)
    monkeypatch.setattr(msgpack, "Packer", Counting)
    tree, _ = encode_folder(entries, {})
    assert len(made) == 1
    assert tree == expected
