"""The staging's cache of folder listings: each fetched once, a damaged one fetched again."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from lamina.agent.treecache import TreeCache
from lamina.db.stores import StoreLocation, init_store
from lamina.store.repository import Store
from lamina.tree.backup import backup


class Reads:
    """A ``BlobSource`` over a store that counts the reads of each id (what a remote
    agent downloads) and the ids a prefetch asked for."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads: Counter[bytes] = Counter()
        self.prefetched: set[bytes] = set()

    def get(self, bid: bytes) -> bytes:
        self.reads[bid] += 1
        return self.store.get(bid)

    def get_many(self, ids: Iterable[bytes]) -> Iterator[bytes]:
        for i in ids:
            yield self.get(i)

    def prefetch(self, ids: Collection[bytes]) -> None:
        self.prefetched.update(ids)


def test_a_listing_is_fetched_once_and_a_damaged_one_again(tmp_path: Path) -> None:
    store = init_store(StoreLocation(data=tmp_path / "data"))
    (tmp_path / "src/etc").mkdir(parents=True)
    (tmp_path / "src/etc/hosts").write_text("127.0.0.1 localhost\n")
    root = backup(store, tmp_path / "src").snapshot.root
    src = Reads(store)
    with TreeCache(src, tmp_path, store.keys.chunking.id_key) as cache:
        listing = cache.tree(root)
        assert cache.tree(root) == cache.get(root) == listing
        assert src.reads[root] == 1 and cache.hits == 2
        cache.prefetch([root, b"\x01" * 32])
        assert src.prefetched == {b"\x01" * 32}  # a listing held here never rides along
        os.pwrite(cache._fd, b"\xff" * 8, 0)  # the file damaged under the agent
        assert cache.get(root) == listing and src.reads[root] == 2  # fetched, not trusted
        assert cache.tree(root) == listing and src.reads[root] == 3  # and kept again
        assert cache.tree(root) == listing and src.reads[root] == 3
    assert not list(tmp_path.glob("trees-*"))  # an anonymous file: nothing left behind
