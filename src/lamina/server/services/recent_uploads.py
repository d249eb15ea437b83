"""Blobs each CVD's bundles stored since its last commit, for that commit's walk.

A first sync's commit holds every chunk and tree the snapshot names to the CVD's
ownership and finds each stored, live, as its kind (``access.CommitOwnership``): on
SQLite one join of the ownership rows to the catalog per 5,000 ids, about half of a
1 GiB first sync's commit (124 of 238 ms, 39,000 ids). Those blobs came in with the
CVD's own bundles a moment before, and the server knew then all the commit asks: it
stored them as that kind, with that size, and recorded them as the CVD's. Remembered
here, per server process, the commit answers them from memory and asks the database
only about the rest (blobs held before the sync, common ones, a bundle another server
took).

Trusted only under the gc epoch the bundle's writer started in. A collection that
condemns blobs bumps the epoch first, and blobs uploaded but not yet committed are
what it condemns: a memo from an earlier epoch is dropped, never used, and the walk
asks the database (which then answers "missing", as it did). A collection that starts
after the commit's writer is the writer's to notice (``Writer.commit_snapshot``
rescues what it names). A collection also takes back, with its condemn, the ownership
rows no snapshot of their CVD reaches (``db.ownership``): those of a sync in flight
among them, which is why a memo is trusted under its own epoch only.

Bounded: ``RECENT_IDS`` ids for all CVDs together, the CVD that stored least recently
dropped first; a CVD's own sync past the bound keeps what it had (the rest is asked).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from lamina.store.blob import BlobKind

#: Ids remembered for all CVDs together (about 130 bytes each: ~20 MB).
RECENT_IDS = 150_000


@dataclass
class _Memo:
    epoch: int
    kinds: dict[BlobKind, dict[bytes, int]] = field(default_factory=dict)
    count: int = 0


class RecentUploads:
    """Per server process (thread-safe): for each CVD, the blobs its bundles stored
    (id → raw length, by kind) under one gc epoch."""

    def __init__(self, limit: int = RECENT_IDS) -> None:
        self.limit = limit
        self._memos: OrderedDict[str, _Memo] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def add(self, cvd_id: str, epoch: int, blobs: Iterable[tuple[BlobKind, bytes, int]]) -> None:
        """A bundle of the CVD, its writer begun under ``epoch``, stored ``blobs`` (kind,
        id, raw length) and recorded them as the CVD's."""
        with self._lock:
            memo = self._memos.get(cvd_id)
            if memo is not None and memo.epoch != epoch:
                if epoch < memo.epoch:  # begun before a collection the memo is past
                    return
                self._drop(cvd_id)  # a collection ran since: what it held may be gone
                memo = None
            if memo is None:
                memo = self._memos[cvd_id] = _Memo(epoch)
            self._memos.move_to_end(cvd_id)
            for kind, bid, raw in blobs:
                if self._held >= self.limit and not self._evict(cvd_id):
                    break
                sizes = memo.kinds.setdefault(kind, {})
                if bid not in sizes:
                    memo.count += 1
                    self._held += 1
                sizes[bid] = raw

    def of(self, cvd_id: str, epoch: int) -> dict[BlobKind, dict[bytes, int]]:
        """What the CVD's bundles stored under ``epoch`` (a copy); nothing when the memo
        is of another epoch (then dropped)."""
        with self._lock:
            memo = self._memos.get(cvd_id)
            if memo is None:
                return {}
            if memo.epoch != epoch:
                self._drop(cvd_id)
                return {}
            return {kind: dict(sizes) for kind, sizes in memo.kinds.items()}

    def forget(self, cvd_id: str) -> None:
        """The CVD committed: its snapshot names what it uploaded."""
        with self._lock:
            self._drop(cvd_id)

    def __len__(self) -> int:
        """Ids remembered, for all CVDs."""
        return self._held

    def _evict(self, keep: str) -> bool:
        """Drop the memo stored into least recently, other than ``keep``'s; False when
        there is none (``keep``'s alone fills the bound)."""
        oldest = next(iter(self._memos))
        if oldest == keep:
            return False
        self._drop(oldest)
        return True

    def _drop(self, cvd_id: str) -> None:
        memo = self._memos.pop(cvd_id, None)
        if memo is not None:
            self._held -= memo.count
