"""The one tree batcher of every blob sink (the store's writer, the agent's uploader).

A folder's tree is known only once its files are read, and asking "is this tree
stored?" once per folder costs a query (or a request) per folder. A sink queues trees
here instead; when a batch is full, or at the sink's flush, it asks once which of them
are lacking and stores those, in the order they were put.

Invariant (write order): a tree must be stored only with or after what it names. The
scanner puts a folder's tree after its files' chunks and its sub-folders' trees, and a
sink settles its batch before every flush, so batching keeps that order
(`tests/store/test_batch.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection

#: Trees per "which are lacking?" question, and their bytes at most.
TREE_BATCH = 512
TREE_BATCH_BYTES = 4 * 1024 * 1024

#: ids -> the subset the store lacks
Need = Callable[[Collection[bytes]], set[bytes]]
#: (id, plaintext) -> stores it
StoreTree = Callable[[bytes, bytes], None]


class TreeBatcher:
    """Queue trees, ask what is lacking once per batch, store those in order. Thread-safe."""

    def __init__(
        self,
        need: Need,
        store: StoreTree,
        *,
        max_count: int = TREE_BATCH,
        max_bytes: int = TREE_BATCH_BYTES,
    ) -> None:
        self._need = need
        self._store = store
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._queued: dict[bytes, bytes] = {}
        self._size = 0
        #: held while a batch is stored: batches reach the sink in the order put
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, bid: bytes, data: bytes) -> None:
        """Queue one tree (again under the same id: ignored); settle a full batch."""
        with self._queue_lock:
            if bid in self._queued:
                return
            self._queued[bid] = data
            self._size += len(data)
            full = len(self._queued) >= self.max_count or self._size >= self.max_bytes
        if full:
            self.settle()

    def settle(self) -> None:
        """Store the queued trees the sink lacks, in the order they were queued."""
        with self._lock:
            with self._queue_lock:
                batch, self._queued, self._size = self._queued, {}, 0
            if not batch:
                return
            lacking = self._need(list(batch))
            for bid, data in batch.items():
                if bid in lacking:
                    self._store(bid, data)
