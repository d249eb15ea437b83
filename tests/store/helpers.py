"""Small builders shared by the store tests."""

from __future__ import annotations

import datetime as dt
import os

from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.repository import Store
from lamina.tree.backup import walk_blobs
from lamina.tree.model import Entry, encode_tree


def snapshot_of(store: Store, files: dict[bytes, bytes], source: str = "test") -> SnapshotRecord:
    """Store a flat tree of ``files`` (one chunk each) and commit a snapshot of it."""
    with store.writer() as w:
        entries = []
        for name, data in files.items():
            cid = w.put(BlobKind.DATA, data)
            entries.append(Entry(name=name, type="file", size=len(data), content=[cid]))
        root = w.put(BlobKind.TREE, encode_tree(entries))
        rec = SnapshotRecord("", dt.datetime.now(dt.UTC), source, root, len(files), 0, {})
        return w.commit_snapshot(rec, lambda r: walk_blobs(store, r))


def random_files(n: int, size: int = 50_000) -> dict[bytes, bytes]:
    return {f"f{i:04d}".encode(): os.urandom(size) for i in range(n)}
