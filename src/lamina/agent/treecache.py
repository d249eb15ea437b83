"""Folder listings (tree blobs) a staging reads more than once, kept on disk while it runs.

A staging plans by walking the snapshot's folders against the live root, then
restores the files it swaps, reading the folders on the way to each of them again
(and, when seeding from the endpoint's own files, once more). Each listing is
downloaded once: the plan's reads go through :meth:`TreeCache.tree`, which keeps
what it fetched; every later read of that id is answered from here.

The listings go to one anonymous file in the staging area (unlinked from the
start: a crash leaves nothing behind), indexed in memory by id, so a large tree
costs disk, not memory. With the agent's id key, each listing read back is checked
against its id again: a damaged file means a fetch, never a wrong folder.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from types import TracebackType

from lamina.store import blob
from lamina.tree.restore_types import BlobSource


class TreeCache:
    """A ``BlobSource`` over ``inner`` that answers the listings :meth:`tree` fetched.

    Thread-safe: a restore's writers read at once. Unusable after :meth:`close`."""

    def __init__(self, inner: BlobSource, folder: Path, id_key: bytes | None = None) -> None:
        self.inner = inner
        self._id_key = id_key
        # Closed by close() (or with the cache as a context manager).
        self._file = tempfile.TemporaryFile(dir=folder, prefix="trees-")  # noqa: SIM115
        self._fd = self._file.fileno()
        #: id -> (offset, length) in the file
        self._at: dict[bytes, tuple[int, int]] = {}
        self._end = 0
        self._lock = threading.Lock()
        #: listings fetched from ``inner`` (each once) and answered from here
        self.fetched = 0
        self.hits = 0

    def tree(self, bid: bytes) -> bytes:
        """A listing: from here if fetched before, else fetched and kept."""
        data = self._cached(bid)
        if data is not None:
            return data
        data = self.inner.get(bid)
        self.keep(bid, data)
        return data

    def keep(self, bid: bytes, data: bytes) -> None:
        """Keep a listing fetched here or by the caller (who checked it against ``bid``)."""
        with self._lock:
            if bid not in self._at:
                os.pwrite(self._fd, data, self._end)
                self._at[bid] = (self._end, len(data))
                self._end += len(data)
                self.fetched += 1

    def holds(self, bid: bytes) -> bool:
        return bid in self._at

    def _cached(self, bid: bytes) -> bytes | None:
        at = self._at.get(bid)
        if at is None:
            return None
        data = os.pread(self._fd, at[1], at[0])
        if len(data) != at[1] or (
            self._id_key is not None and blob.blob_id(self._id_key, data) != bid
        ):
            with self._lock:
                self._at.pop(bid, None)
            return None
        self.hits += 1
        return data

    def get(self, bid: bytes) -> bytes:
        data = self._cached(bid)
        return data if data is not None else self.inner.get(bid)

    def get_many(self, ids: Iterable[bytes]) -> Iterator[bytes]:
        for bid in ids:
            yield self.get(bid)

    def prefetch(self, ids: Collection[bytes]) -> None:
        # A listing held here must not ride along in the next request.
        self.inner.prefetch([i for i in ids if i not in self._at])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TreeCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
