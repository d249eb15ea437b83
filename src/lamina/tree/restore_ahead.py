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

from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

from lamina.tree.model import Entry, decode_tree

AHEAD_TREES = 64
AHEAD_CHUNKS = 2048
TREES_AT_ONCE = 16
#: The same when only trees are read here (``chunks=False``: worker processes read the
#: files' chunks): a tree is small, and each read is a round trip the walk waits for
#: (through a server, a request of its own: "Restores (session 13)" in docs/design.md).
AHEAD_TREES_ONLY = 512
AHEAD_CHUNKS_ONLY = 32768
TREES_AT_ONCE_ONLY = 64
#: Trees of at most ``KEEP_ENTRIES`` entries kept once taken, the last ``KEEP_TREES`` (only
#: trees are read here): the same folder again (empty folders, copies) is no new read.
KEEP_TREES = 1024
KEEP_ENTRIES = 16


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
        self._at_once = TREES_AT_ONCE if chunks else TREES_AT_ONCE_ONLY
        self._most = AHEAD_TREES if chunks else AHEAD_TREES_ONLY
        self._most_chunks = AHEAD_CHUNKS if chunks else AHEAD_CHUNKS_ONLY
        self._trees: dict[bytes, list[Entry]] = {}
        #: small trees already taken, the last ``KEEP_TREES`` (only trees read here)
        self._kept: OrderedDict[bytes, list[Entry]] = OrderedDict()
        self._chunks = 0
        self._steps: Iterator[None] | None = self._walk(root)

    def take(self, tree_id: bytes) -> list[Entry] | None:
        """The decoded tree ``tree_id`` if it was read ahead (then it is forgotten here),
        after reading further ahead."""
        while (
            self._steps is not None
            and len(self._trees) < self._most
            and self._chunks < self._most_chunks
        ):
            if next(self._steps, True):
                self._steps = None
        entries = self._trees.pop(tree_id, None)
        if entries is not None:
            self._chunks -= _chunk_count(entries)
            if not self._queue_chunks and len(entries) <= KEEP_ENTRIES:
                self._kept[tree_id] = entries
                if len(self._kept) > KEEP_TREES:
                    self._kept.popitem(last=False)
        elif tree_id in self._kept:
            entries = self._kept[tree_id]
            self._kept.move_to_end(tree_id)
        return entries

    def _walk(self, root: bytes) -> Iterator[None]:
        """Depth first, up to ``TREES_AT_ONCE`` trees from the top of the stack at a time
        (the next siblings, queued together by their parent): one request reads them."""
        stack = [root]
        n = self._at_once
        while stack:
            batch = [t for t in reversed(stack[-n:]) if t not in self._trees]
            del stack[-n:]
            # the same folder twice: the walk reads the second (or takes it kept)
            batch = list(dict.fromkeys(batch))
            wanted = [t for t in batch if t not in self._kept]
            got = dict(zip(wanted, self._store.get_many(wanted), strict=True))
            read = [
                (tid, decode_tree(got[tid]) if tid in got else self._kept[tid]) for tid in batch
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
