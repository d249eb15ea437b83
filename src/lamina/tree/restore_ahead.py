"""Reading a restore's trees ahead of its walk.

Into an empty folder nothing is in place to keep, so every chunk queued ahead is one
a file job will ask for. The next trees in the walk's order (depth first, entries in
order) are read in advance, at most ``AHEAD_TREES`` of them holding at most
``AHEAD_CHUNKS`` chunk ids, and their chunks and sub-trees are queued with the
source (``BlobSource.prefetch``): a source that batches (``/blobs/read``) then
carries many small folders per request instead of one, and a store looks their
locations up together. The walk takes each tree from here when it gets there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from lamina.tree.model import Entry, decode_tree

AHEAD_TREES = 64
AHEAD_CHUNKS = 2048
TREES_AT_ONCE = 16


class _Source(Protocol):
    def get_many(self, ids: list[bytes]) -> Iterator[bytes]: ...

    def prefetch(self, ids: list[bytes]) -> None: ...


def _chunk_count(entries: list[Entry]) -> int:
    return sum(1 for e in entries for _ in e.chunk_ids())


class ReadAhead:
    """The trees of the walk from ``root``, read ahead (used by the walk's thread only)."""

    def __init__(self, store: _Source, root: bytes, *, chunks: bool = True) -> None:
        """``chunks``: queue the files' chunks too (False: their readers are elsewhere,
        worker processes with their own sources)."""
        self._store = store
        self._queue_chunks = chunks
        self._trees: dict[bytes, list[Entry]] = {}
        self._chunks = 0
        self._steps: Iterator[None] | None = self._walk(root)

    def take(self, tree_id: bytes) -> list[Entry] | None:
        """The decoded tree ``tree_id`` if it was read ahead (then it is forgotten here),
        after reading further ahead."""
        while (
            self._steps is not None
            and len(self._trees) < AHEAD_TREES
            and self._chunks < AHEAD_CHUNKS
        ):
            if next(self._steps, True):
                self._steps = None
        entries = self._trees.pop(tree_id, None)
        if entries is not None:
            self._chunks -= _chunk_count(entries)
        return entries

    def _walk(self, root: bytes) -> Iterator[None]:
        """Depth first, up to ``TREES_AT_ONCE`` trees from the top of the stack at a time
        (the next siblings, queued together by their parent): one request reads them."""
        stack = [root]
        while stack:
            batch = [t for t in reversed(stack[-TREES_AT_ONCE:]) if t not in self._trees]
            del stack[-TREES_AT_ONCE:]
            # the same folder twice: the walk reads the second
            batch = list(dict.fromkeys(batch))
            read = [
                (tid, decode_tree(raw))
                for tid, raw in zip(batch, self._store.get_many(batch), strict=True)
            ]
            # One lookup for the batch: its sub-folders' trees first (the walk reads them
            # next, and a source reading ahead fetches them before the data), then its
            # files' chunks.
            queued: list[bytes] = []
            for _, entries in reversed(read):
                subtrees = [e.subtree for e in entries if e.subtree is not None]
                queued.extend(subtrees)
                stack.extend(reversed(subtrees))
            for tid, entries in read:
                if self._queue_chunks:
                    queued.extend(c for e in entries for c in e.chunk_ids())
                self._trees[tid] = entries
                self._chunks += _chunk_count(entries)
            self._store.prefetch(queued)
            yield None
