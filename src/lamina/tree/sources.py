"""Blob sources for a restore that read through a server, in batches, optionally verified."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator

from lamina.errors import IntegrityError
from lamina.store import blob

#: ids asked for in one request; the server may answer with fewer (a prefix) to
#: bound its response, and the rest are asked for again.
BATCH = 128


class BatchedBlobs:
    """A ``BlobSource`` over ``fetch(ids) -> plaintexts``.

    ``prefetch`` queues ids the restore will read next; each request then carries
    the wanted id and the queued ones after it, so a folder of small files costs
    a few requests, not one per file. With ``id_key`` every blob is re-hashed
    against its id before use.
    """

    def __init__(
        self, fetch: Callable[[list[bytes]], list[bytes]], id_key: bytes | None = None
    ) -> None:
        self._fetch = fetch
        self._id_key = id_key
        self._queue: OrderedDict[bytes, None] = OrderedDict()
        self._have: dict[bytes, bytes] = {}
        #: blobs found locally (e.g. chunks of the endpoint's own files): never fetched
        self.local: dict[bytes, bytes] = {}
        self.fetched_bytes = 0

    def prefetch(self, ids: Collection[bytes]) -> None:
        for i in ids:
            if i not in self.local:
                self._queue[i] = None

    def _load(self, first: bytes) -> None:
        batch = [first]
        for i in self._queue:  # not mutated in this loop
            if len(batch) >= BATCH:
                break
            if i != first and i not in self._have:
                batch.append(i)
        out = self._fetch(batch)
        if not 1 <= len(out) <= len(batch):
            raise IntegrityError("the server answered a blob request with something else")
        for bid, data in zip(batch[: len(out)], out, strict=True):
            if not isinstance(data, bytes):
                raise IntegrityError("the server answered a blob request with something else")
            if self._id_key is not None and blob.blob_id(self._id_key, data) != bid:
                raise IntegrityError(f"blob {bid.hex()[:16]} from the server does not match its id")
            self._have[bid] = data
            self.fetched_bytes += len(data)
            self._queue.pop(bid, None)

    def get(self, bid: bytes) -> bytes:
        if bid in self.local:
            return self.local[bid]
        if bid not in self._have:
            self._load(bid)
        return self._have.pop(bid)

    def get_many(self, ids: Iterable[bytes]) -> Iterator[bytes]:
        for bid in ids:
            yield self.get(bid)
