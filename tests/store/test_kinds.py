"""One blob, one kind: a tree is a tree because it is referenced as one.

The review's finding 1 at the library level: a device stores a tree's bytes as a
DATA blob; another writer, told the id is present, stores only the chunks. The
collector must still walk the tree (and keep its chunks), ``check`` must report
the confusion, and a writer that needs the tree must store it again as a TREE.
"""

from __future__ import annotations

import datetime as dt
import os

from lamina.store.blob import BlobKind, blob_id
from lamina.store.catalog import SnapshotRecord
from lamina.store.check import check
from lamina.store.gc import collect
from lamina.store.repository import Store
from lamina.store.roots import snapshot_roots
from lamina.tree.backup import walk_blobs
from lamina.tree.model import Entry, encode_tree, references


def _gc(store: Store) -> None:
    collect(store, [snapshot_roots(store.catalog)], references)


def _check(store: Store):  # type: ignore[no-untyped-def]
    return check(store, [snapshot_roots(store.catalog)], references, read_data=True)


def _commit(store: Store, root: bytes, source: str) -> SnapshotRecord:
    with store.writer() as w:
        rec = SnapshotRecord("", dt.datetime.now(dt.UTC), source, root, 1, 0, {})
        return w.commit_snapshot(rec, lambda r: walk_blobs(store, r))


def _package(store: Store) -> tuple[bytes, bytes, bytes, bytes]:
    """A folder with one file: (chunk, chunk id, its tree's bytes, tree id)."""
    chunk = os.urandom(40_000)
    cid = blob_id(store.keys.chunking.id_key, chunk)
    sub = encode_tree([Entry(name=b"libfoo.so", type="file", size=len(chunk), content=[cid])])
    return chunk, cid, sub, blob_id(store.keys.chunking.id_key, sub)


def _attacker_stores_tree_as_data(store: Store, sub: bytes, tid: bytes) -> None:
    with store.writer() as w:
        w.put_chunk(BlobKind.DATA, tid, sub)


def _victim_told_tree_is_present(store: Store, chunk: bytes, cid: bytes, tid: bytes) -> bytes:
    """What the a188115 server let happen: the victim uploads its chunk and its top
    tree, but not the subtree the server said it held; return the top tree's id."""
    with store.writer() as w:
        w.put_chunk(BlobKind.DATA, cid, chunk)
        top = encode_tree([Entry(name=b"usr", type="dir", mode=0o755, subtree=tid)])
        return w.put(BlobKind.TREE, top)


def test_need_says_missing_for_a_tree_held_only_as_data(store: Store) -> None:
    _, _, sub, tid = _package(store)
    _attacker_stores_tree_as_data(store, sub, tid)
    assert store.catalog.missing([tid]) == set()
    assert store.catalog.missing([tid], kind=BlobKind.TREE) == {tid}
    assert store.catalog.missing([tid], kind=BlobKind.DATA) == set()
    with store.writer() as w:
        assert w.need([tid], BlobKind.TREE) == {tid}
        assert w.need([tid]) == set()  # as data it is there
        assert w.put(BlobKind.TREE, sub) == tid
    # The tree arriving as a tree is stored as a tree, beside the data copy.
    assert store.catalog.locate([tid], kind=BlobKind.TREE)[tid].kind == BlobKind.TREE
    assert store.catalog.locate([tid], kind=BlobKind.DATA)[tid].kind == BlobKind.DATA


def test_one_session_stores_one_id_under_both_kinds(store: Store) -> None:
    """A pack holds one row per id: the second kind goes to the next pack, no error."""
    _, _, sub, tid = _package(store)
    with store.writer() as w:
        w.put_chunk(BlobKind.DATA, tid, sub)
        w.put(BlobKind.TREE, sub)
        w.put_chunk(BlobKind.DATA, tid, sub)  # again: skipped, this session wrote it
    rows = [r for r in store.catalog.iter_blobs() if r.id == tid]
    assert sorted(r.kind for r in rows) == [BlobKind.DATA, BlobKind.TREE]
    assert len({r.pack for r in rows}) == 2


def test_gc_keeps_the_chunks_of_a_tree_stored_as_data(store: Store) -> None:
    """The review's reproduction: gc deleted the victim's chunk, check said no errors."""
    chunk, cid, sub, tid = _package(store)
    _attacker_stores_tree_as_data(store, sub, tid)
    snap = _commit(store, _victim_told_tree_is_present(store, chunk, cid, tid), "victim")

    rep = _check(store)  # check detects the confusion: damage, so a non-zero exit
    assert not rep.ok
    assert any("stored only as a DATA blob" in e and tid.hex()[:16] in e for e in rep.errors), (
        rep.errors
    )

    _gc(store)

    assert store.get(cid) == chunk
    for bid in walk_blobs(store, snap.root):
        store.get(bid)
    # ... and gc repaired it: the tree is stored as a tree again.
    assert tid in store.catalog.locate([tid], kind=BlobKind.TREE)
    rep = _check(store)
    assert rep.ok, rep.errors


def test_check_is_clean_once_the_tree_is_stored_as_a_tree(store: Store) -> None:
    chunk, cid, sub, tid = _package(store)
    _attacker_stores_tree_as_data(store, sub, tid)
    _commit(store, _victim_told_tree_is_present(store, chunk, cid, tid), "victim")
    with store.writer() as w:
        w.put(BlobKind.TREE, sub)
    _gc(store)
    rep = _check(store)
    assert rep.ok, rep.errors
    # gc kept the tree row: a data row of the same id is no "copy" of it.
    assert tid in store.catalog.locate([tid], kind=BlobKind.TREE)
    assert store.get(cid) == chunk


def test_gc_walks_a_tree_first_seen_as_a_chunk(store: Store) -> None:
    """An earlier snapshot holds a file whose bytes are the tree's encoding: marking
    that id as a chunk must not stop the collector from walking it as a tree later."""
    chunk, cid, sub, tid = _package(store)
    with store.writer() as w:
        w.put_chunk(BlobKind.DATA, tid, sub)
        early = encode_tree([Entry(name=b"tree.bin", type="file", size=len(sub), content=[tid])])
        early_root = w.put(BlobKind.TREE, early)
    _commit(store, early_root, "a-early")
    snap = _commit(store, _victim_told_tree_is_present(store, chunk, cid, tid), "b-victim")
    _gc(store)
    assert store.get(cid) == chunk
    for bid in walk_blobs(store, snap.root):
        store.get(bid)
