"""diff_trees: what changed, with the right paths, without reading identical subtrees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lamina.store.repository import Store
from lamina.tree.diff import ADDED, METADATA, MODIFIED, REMOVED, diff_trees
from lamina.tree.model import decode_tree

from .treeutil import MTIME, scan_tree, set_mtime, write


def build(root: Path) -> None:
    write(root / "same" / "x" / "y" / "z.txt", b"unchanged\n")
    write(root / "same" / "x" / "w.txt", b"unchanged too\n")
    write(root / "same" / "top.txt", b"top\n")
    write(root / "edit" / "content.txt", b"old content\n")
    write(root / "edit" / "mode.txt", b"m\n")
    write(root / "edit" / "owner.txt", b"o\n")
    write(root / "edit" / "time.txt", b"t\n")
    write(root / "edit" / "xattr.txt", b"x\n")
    write(root / "edit" / "gone.txt", b"bye\n")
    write(root / "edit" / "becomes-dir", b"file for now\n")
    write(root / "old-dir" / "a.txt", b"a\n")
    write(root / "old-dir" / "sub" / "b.txt", b"b\n")
    os.symlink("target-1", root / "edit" / "link")
    os.mkfifo(root / "edit" / "fifo-to-file")
    set_mtime(root / "edit" / "link", MTIME)
    set_mtime(root / "edit" / "fifo-to-file", MTIME)


def freeze_dir_times(root: Path) -> dict[Path, int]:
    return {Path(d): os.stat(d).st_mtime_ns for d, _, _ in os.walk(root)}


def thaw_dir_times(times: dict[Path, int]) -> None:
    for d, t in times.items():
        if d.is_dir() and not d.is_symlink():
            os.utime(d, ns=(t, t))


def change(root: Path) -> None:
    times = freeze_dir_times(root)
    e = root / "edit"
    write(e / "content.txt", b"new content, longer\n")
    os.chmod(e / "mode.txt", 0o600)
    os.chown(e / "owner.txt", 1234, 5678)
    set_mtime(e / "time.txt", MTIME + 1)
    os.setxattr(e / "xattr.txt", "user.tag", b"v")
    os.unlink(e / "gone.txt")
    os.unlink(e / "becomes-dir")
    write(e / "becomes-dir" / "inner.txt", b"inner\n")
    os.unlink(e / "link")
    os.symlink("target-2", e / "link")
    set_mtime(e / "link", MTIME)
    os.unlink(e / "fifo-to-file")
    write(e / "fifo-to-file", b"")
    write(e / "added.txt", b"added\n")
    shutil.rmtree(root / "old-dir")
    write(root / "new-dir" / "deep" / "n.txt", b"n\n")
    thaw_dir_times(times)
    set_mtime(root / "new-dir" / "deep", MTIME)
    set_mtime(root / "new-dir", MTIME)
    set_mtime(e / "becomes-dir", MTIME)
    os.chmod(root / "same", 0o700)  # a directory's own metadata; its contents are the same
    os.utime(root / "same", ns=(times[root / "same"],) * 2)


EXPECTED = {
    (b"edit/content.txt", MODIFIED),
    (b"edit/mode.txt", METADATA),
    (b"edit/owner.txt", METADATA),
    (b"edit/time.txt", METADATA),
    (b"edit/xattr.txt", METADATA),
    (b"edit/gone.txt", REMOVED),
    (b"edit/added.txt", ADDED),
    (b"edit/becomes-dir", REMOVED),
    (b"edit/becomes-dir", ADDED),
    (b"edit/becomes-dir/inner.txt", ADDED),
    (b"edit/link", MODIFIED),
    (b"edit/fifo-to-file", MODIFIED),
    (b"old-dir", REMOVED),
    (b"old-dir/a.txt", REMOVED),
    (b"old-dir/sub", REMOVED),
    (b"old-dir/sub/b.txt", REMOVED),
    (b"new-dir", ADDED),
    (b"new-dir/deep", ADDED),
    (b"new-dir/deep/n.txt", ADDED),
    (b"same", METADATA),
}


class CountingLoad:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.loaded: list[bytes] = []

    def __call__(self, tid: bytes) -> bytes:
        self.loaded.append(tid)
        return self.store.get(tid)


def subtree_ids(store: Store, tid: bytes) -> set[bytes]:
    out = {tid}
    for e in decode_tree(store.get(tid)):
        if e.subtree is not None:
            out |= subtree_ids(store, e.subtree)
    return out


def child(store: Store, tid: bytes, name: bytes) -> bytes:
    (e,) = [e for e in decode_tree(store.get(tid)) if e.name == name]
    assert e.subtree is not None
    return e.subtree


@pytest.fixture
def two(store: Store, tmp_path: Path) -> tuple[bytes, bytes]:
    root = tmp_path / "src"
    build(root)
    old, _ = scan_tree(store, root)
    change(root)
    new, _ = scan_tree(store, root)
    return old, new


def test_diff_reports_every_change_with_its_path(store: Store, two: tuple[bytes, bytes]) -> None:
    old, new = two
    changes = list(diff_trees(store.get, old, new))
    got = [(c.path, c.kind) for c in changes]
    assert len(got) == len(set(got)), got
    assert set(got) == EXPECTED
    by = {(c.path, c.kind): c for c in changes}
    c = by[(b"edit/content.txt", MODIFIED)]
    assert c.old is not None and c.new is not None and c.new.size == len(b"new content, longer\n")
    assert by[(b"edit/gone.txt", REMOVED)].new is None
    assert by[(b"edit/added.txt", ADDED)].old is None
    assert by[(b"edit/owner.txt", METADATA)].new.uid == 1234  # type: ignore[union-attr]
    assert by[(b"edit/becomes-dir", ADDED)].new.type == "dir"  # type: ignore[union-attr]
    pub = by[(b"new-dir/deep/n.txt", ADDED)].to_public()
    assert pub == {"path": "new-dir/deep/n.txt", "change": "added", "type": "file", "size": 2}


def test_diff_backwards_swaps_added_and_removed(store: Store, two: tuple[bytes, bytes]) -> None:
    old, new = two
    swap = {ADDED: REMOVED, REMOVED: ADDED, MODIFIED: MODIFIED, METADATA: METADATA}
    back = {(c.path, c.kind) for c in diff_trees(store.get, new, old)}
    assert back == {(p, swap[k]) for p, k in EXPECTED}


def test_identical_subtrees_are_not_loaded(store: Store, two: tuple[bytes, bytes]) -> None:
    old, new = two
    same_old = child(store, old, b"same")
    # "same" changed its own mode (reported as METADATA, from the parent's entry),
    # but its contents did not: one subtree id, never read.
    assert same_old == child(store, new, b"same")
    load = CountingLoad(store)
    list(diff_trees(load, old, new))
    skipped = subtree_ids(store, same_old)
    assert len(skipped) == 3  # same, same/x, same/x/y
    assert not skipped & set(load.loaded), "an identical subtree was read"
    edit_old, edit_new = child(store, old, b"edit"), child(store, new, b"edit")
    assert {old, new, edit_old, edit_new} <= set(load.loaded)
    assert len(load.loaded) == len(set(load.loaded))  # nothing read twice


def test_identical_roots_load_nothing(store: Store, two: tuple[bytes, bytes]) -> None:
    old, _ = two
    load = CountingLoad(store)
    assert list(diff_trees(load, old, old)) == []
    assert load.loaded == []


def test_diff_against_nothing_lists_everything(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "src"
    write(root / "a" / "b.txt", b"b")
    write(root / "c.txt", b"c")
    tid, _ = scan_tree(store, root)
    assert [(c.path, c.kind) for c in diff_trees(store.get, None, tid)] == [
        (b"a", ADDED),
        (b"a/b.txt", ADDED),
        (b"c.txt", ADDED),
    ]
    assert [(c.path, c.kind) for c in diff_trees(store.get, tid, None)] == [
        (b"a", REMOVED),
        (b"a/b.txt", REMOVED),
        (b"c.txt", REMOVED),
    ]


def test_non_utf8_paths_in_diff(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "src"
    write(root / "keep", b"k")
    old, _ = scan_tree(store, root)
    os.mkdir(os.fsencode(root) + b"/\xff")
    with open(os.fsencode(root) + b"/\xff/caf\xe9", "wb") as f:
        f.write(b"x")
    new, _ = scan_tree(store, root)
    changes = list(diff_trees(store.get, old, new))
    assert [(c.path, c.kind) for c in changes] == [(b"\xff", ADDED), (b"\xff/caf\xe9", ADDED)]
    assert changes[1].to_public()["path"] == os.fsdecode(b"\xff/caf\xe9")


def test_identical_sibling_of_a_change_is_not_loaded(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "src"
    write(root / "p" / "unchanged" / "q" / "f", b"f")
    write(root / "p" / "changed.txt", b"1")
    set_mtime(root / "p", MTIME)
    old, _ = scan_tree(store, root)
    write(root / "p" / "changed.txt", b"2")
    set_mtime(root / "p", MTIME)
    new, _ = scan_tree(store, root)
    load = CountingLoad(store)
    assert [(c.path, c.kind) for c in diff_trees(load, old, new)] == [(b"p/changed.txt", MODIFIED)]
    p_old, p_new = child(store, old, b"p"), child(store, new, b"p")
    assert sorted(load.loaded) == sorted([old, new, p_old, p_new])
    assert not subtree_ids(store, child(store, p_old, b"unchanged")) & set(load.loaded)
