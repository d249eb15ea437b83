"""Per-folder tree reuse (files cache schema 3 and 4): an unchanged folder's tree id comes from
the cache, and no change of content, name, metadata or shape is ever hidden by it.

The oracle of every test: the root a scan with the cache gives must be the root a scan
without any cache gives for the same folder (every tree built and hashed anew).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from lamina.store.rebuild import rebuild_index
from lamina.store.repository import Store
from lamina.tree import scan as scan_mod
from lamina.tree.backup import BackupResult, backup
from lamina.tree.cache import SCHEMA_VERSION, FilesCache
from lamina.tree.model import decode_tree, references
from lamina.tree.restore import restore_tree

from .treeutil import MTIME, assert_same_tree, scan_tree, set_mtime, write

DIRS = 5  # the root, a, a/b, a/b/c, z


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_src(tmp_path)


def make_src(tmp_path: Path) -> Path:
    """Five folders, five files and a symlink."""
    root = tmp_path / "src"
    write(root / "top.txt", b"top\n", MTIME)
    write(root / "a" / "one.txt", b"one\n" * 10, MTIME + 1)
    write(root / "a" / "b" / "two.txt", b"two\n" * 20, MTIME + 2)
    write(root / "a" / "b" / "c" / "three.txt", b"three\n" * 30, MTIME + 3)
    write(root / "z" / "last.txt", b"last\n", MTIME + 4)
    os.symlink("top.txt", root / "a" / "link")
    return root


def run(store: Store, src: Path, cache: Path, **kw: object) -> BackupResult:
    return backup(store, src, cache_path=cache, workers=2, **kw)  # type: ignore[arg-type]


def fresh_root(store: Store, src: Path) -> bytes:
    """The root tree id with every tree built anew (no cache at all)."""
    return scan_tree(store, src)[0]


def check(store: Store, src: Path, r: BackupResult, out: Path) -> None:
    assert r.stats.errors == []
    assert r.snapshot.root == fresh_root(store, src)
    assert restore_tree(store, r.snapshot.root, out).errors == []
    assert_same_tree(src, out)


class TreeCounter:
    """Counts the trees the scanner encodes (a reused folder encodes none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = scan_mod.encode_tree

        def encode_tree(entries: list[object]) -> bytes:
            self.calls += 1
            return real(entries)  # type: ignore[arg-type]

        real_folder = scan_mod.encode_folder

        def encode_folder(entries: list[object], reused: dict[bytes, bytes]) -> object:
            self.calls += 1
            return real_folder(entries, reused)  # type: ignore[arg-type]

        monkeypatch.setattr(scan_mod, "encode_tree", encode_tree)
        monkeypatch.setattr(scan_mod, "encode_folder", encode_folder)


def test_an_unchanged_rescan_reuses_every_tree_and_builds_none(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache.db"
    first = run(store, src, cache)
    assert first.stats.trees_reused == 0

    trees = TreeCounter(monkeypatch)
    second = run(store, src, cache)
    assert second.stats.trees_reused == DIRS
    assert trees.calls == 0
    assert second.snapshot.root == first.snapshot.root
    assert (second.stats.files, second.stats.bytes, second.stats.others) == (
        first.stats.files,
        first.stats.bytes,
        first.stats.others,
    )
    assert second.stats.files_unchanged == first.stats.files

    # the counter sees the trees a scan without reuse builds
    third = run(store, src, cache, reuse_trees=False)
    assert third.stats.trees_reused == 0 and trees.calls == DIRS
    assert third.snapshot.root == first.snapshot.root


def test_a_deep_change_rebuilds_its_folders_up_to_the_root_and_reuses_the_rest(
    store: Store, src: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    write(src / "a" / "b" / "c" / "three.txt", b"changed\n", MTIME + 3)
    r = run(store, src, cache)
    assert r.stats.files_read == 1
    assert r.stats.trees_reused == 1  # z; the root, a, a/b and a/b/c are built
    check(store, src, r, tmp_path / "out")
    assert run(store, src, cache).stats.trees_reused == DIRS


def test_a_file_changed_in_place_with_size_and_mtime_restored_is_read(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """``touch -d`` puts the mtime back; the ctime moved, so the folder is not reused."""
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    p = src / "a" / "b" / "two.txt"
    before = os.stat(p)
    p.write_bytes(p.read_bytes().upper())
    set_mtime(p, before.st_mtime_ns)
    after = os.stat(p)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    r = run(store, src, cache)
    assert r.stats.files_read == 1
    check(store, src, r, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b" / "two.txt").read_bytes() == b"TWO\n" * 20


def test_a_renamed_file_is_seen(store: Store, src: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    dir_mtime = os.stat(src / "a" / "b").st_mtime_ns
    os.rename(src / "a" / "b" / "two.txt", src / "a" / "b" / "deux.txt")
    set_mtime(src / "a" / "b", dir_mtime)  # the folder's own mtime put back too
    r = run(store, src, cache)
    check(store, src, r, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out" / "a" / "b")) == ["c", "deux.txt"]


def test_an_xattr_change_is_seen(store: Store, src: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.db"
    os.setxattr(src / "z" / "last.txt", "user.note", b"first")
    run(store, src, cache)
    os.setxattr(src / "z" / "last.txt", "user.note", b"second")
    r = run(store, src, cache)
    check(store, src, r, tmp_path / "out")
    assert os.getxattr(tmp_path / "out" / "z" / "last.txt", "user.note") == b"second"
    # and a folder's own xattr, which lives in its parent's tree
    os.setxattr(src / "a" / "b" / "c", "user.note", b"folder")
    r = run(store, src, cache)
    check(store, src, r, tmp_path / "out2")


def test_a_new_empty_folder_and_a_deleted_folder_are_seen(
    store: Store, src: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    b_mtime = os.stat(src / "a" / "b").st_mtime_ns
    (src / "a" / "b" / "c" / "new").mkdir()
    r = run(store, src, cache)
    check(store, src, r, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b" / "c" / "new").is_dir()

    for p in (src / "a" / "b" / "c" / "new", src / "a" / "b" / "c" / "three.txt"):
        p.unlink() if p.is_file() else p.rmdir()
    (src / "a" / "b" / "c").rmdir()
    set_mtime(src / "a" / "b", b_mtime)
    r = run(store, src, cache)
    check(store, src, r, tmp_path / "out2")
    assert not (tmp_path / "out2" / "a" / "b" / "c").exists()


def test_an_excluded_entry_changes_the_listing(store: Store, src: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    r = backup(store, src, cache_path=cache, exclude=lambda rel, _d: rel == b"a/one.txt")
    assert r.stats.errors == []
    assert r.stats.trees_reused == 3  # a/b, a/b/c, z
    (a,) = [e for e in decode_tree(store.get(r.snapshot.root)) if e.name == b"a"]
    assert a.subtree is not None
    assert b"one.txt" not in {e.name for e in decode_tree(store.get(a.subtree))}


def _rows(cache: Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(cache)
    with db:
        db.execute(sql, args)
    db.close()


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE dirs SET tree = x'00'",  # not an id
        "UPDATE dirs SET listing = 'text'",  # not bytes
        "UPDATE dirs SET subtrees = x'0102'",  # not whole ids
        "UPDATE dirs SET tree = NULL",
    ],
)
def test_a_malformed_folder_row_is_never_used(
    store: Store, src: Path, tmp_path: Path, damage: str
) -> None:
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    _rows(cache, damage)
    r = run(store, src, cache)
    assert r.stats.trees_reused == 0
    check(store, src, r, tmp_path / "out")
    assert run(store, src, cache).stats.trees_reused == DIRS  # the rows are written again


def test_a_row_of_another_folder_is_not_used(store: Store, src: Path, tmp_path: Path) -> None:
    """Rows swapped between folders: each listing's signature differs, nothing is reused."""
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    _rows(cache, "UPDATE dirs SET dir = x'ff' WHERE dir = CAST('z' AS BLOB)")
    _rows(cache, "UPDATE dirs SET dir = CAST('z' AS BLOB) WHERE dir = CAST('a/b/c' AS BLOB)")
    _rows(cache, "UPDATE dirs SET dir = CAST('a/b/c' AS BLOB) WHERE dir = x'ff'")
    r = run(store, src, cache)
    check(store, src, r, tmp_path / "out")


def test_a_folder_row_without_its_files_rows_reads_the_files(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """The folder's listing matches its row but the files cache lost the folder's files
    (and the row its entries): when a sub-folder changed and the tree is built after
    all, they are read, not lost."""
    cache = tmp_path / "cache.db"
    run(store, src, cache)
    _rows(cache, "DELETE FROM files WHERE dir = CAST('a/b' AS BLOB)")
    _rows(cache, f"DELETE FROM dir_entries WHERE tree = ({TREE_OF % 'a/b'})")
    write(src / "a" / "b" / "c" / "three.txt", b"changed\n", MTIME + 3)
    r = run(store, src, cache)
    assert r.stats.files_read == 2  # three.txt, and two.txt whose row went
    check(store, src, r, tmp_path / "out")


def _version(cache: Path, v: str) -> None:
    _rows(cache, "UPDATE meta SET value = ? WHERE key = 'version'", v)


#: the tree id a folder's row names
TREE_OF = "SELECT tree FROM dirs WHERE dir = CAST('%s' AS BLOB)"


def _version_3_shape(cache: Path) -> None:
    """The tables as version 3 made them (no ``dir_entries``)."""
    _rows(cache, "DROP TABLE dir_entries")


@pytest.mark.parametrize("version", ["2", "3"])
def test_a_version_2_or_3_cache_keeps_its_files_and_drops_any_folder_rows(
    store: Store, src: Path, tmp_path: Path, version: str
) -> None:
    """Schemas 2 (no folder rows) and 3 (folder rows without their entries) are migrated:
    the files rows still spare the reading; folder rows found beside them (version 3's,
    or a downgrade, then an upgrade: a version-2 agent kept them while it synced and
    collected) are dropped, never used."""
    assert SCHEMA_VERSION == 4
    cache = tmp_path / "cache.db"
    first = run(store, src, cache)
    if version == "3":
        _version_3_shape(cache)
    _version(cache, version)
    r = run(store, src, cache)
    assert r.stats.trees_reused == 0
    assert r.stats.files_read == 0  # the files rows were kept
    assert r.snapshot.root == first.snapshot.root
    assert run(store, src, cache).stats.trees_reused == DIRS  # version 4 from then on


@pytest.mark.parametrize("version", ["1", "5", "x"])
def test_a_cache_of_another_version_is_emptied(
    store: Store, src: Path, tmp_path: Path, version: str
) -> None:
    cache = tmp_path / "cache.db"
    first = run(store, src, cache)
    _version(cache, version)
    r = run(store, src, cache)
    assert r.stats.trees_reused == 0 and r.stats.files_read == first.stats.files_read
    check(store, src, r, tmp_path / "out")
    c = FilesCache(cache, store.keys.store_id, store.catalog.gc_epoch())
    try:
        assert c.folder(b"") is not None  # rebuilt by that scan's commit
    finally:
        c.close()


def test_after_the_index_is_rebuilt_no_tree_is_reused(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """A rebuilt index may have left out damaged packs, and the trees in them: the epoch
    moves, the files cache is stale, and the next scan builds (and so stores) every tree."""
    cache = tmp_path / "cache.db"
    first = run(store, src, cache)
    rebuild_index(store, references)
    again = run(store, src, cache)
    assert again.stats.trees_reused == 0
    assert again.snapshot.root == first.snapshot.root
    restore_tree(store, again.snapshot.root, tmp_path / "out")
    assert_same_tree(src, tmp_path / "out")
