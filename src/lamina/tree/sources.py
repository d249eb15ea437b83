"""Blob sources for a restore that read through a server, in batches, optionally verified."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgpack

from lamina.errors import IntegrityError
from lamina.store import blob

T = TypeVar("T")

#: ids asked for in one request; the server may answer with fewer (a prefix) to
#: bound its response, and the rest are asked for again.
BATCH = 128

#: Raw bytes one batch read from a store holds at most (``in_batches``).
STORE_BATCH = 16 * 1024 * 1024

#: ``post(path, json_body) -> response bytes``: one request to the server's API.
Post = Callable[[str, Any], bytes]


@runtime_checkable
class ReadsMany(Protocol):
    """A source that reads many blobs at once (``Store.open_many``: a prefix of ``ids``,
    at most ``limit`` raw bytes, their packs read in coalesced ranges)."""

    def open_many(self, ids: list[bytes], limit: int) -> list[bytes]: ...


class BatchedBlobs:
    """A ``BlobSource`` over ``fetch(ids) -> plaintexts``.

    ``prefetch`` queues ids the restore will read next; each request then carries
    the wanted id and the queued ones after it, so a folder of small files costs
    a few requests, not one per file. With ``id_key`` every blob is re-hashed
    against its id before use.

    Thread-safe: a restore's file writers read at once, so several requests are in
    flight together (over the client's keep-alive connections). An id another
    thread is already fetching is waited for, not asked again.
    """

    def __init__(
        self, fetch: Callable[[list[bytes]], list[bytes]], id_key: bytes | None = None
    ) -> None:
        self._fetch = fetch
        self._id_key = id_key
        self._queue: OrderedDict[bytes, None] = OrderedDict()
        self._have: dict[bytes, bytes] = {}
        #: id -> set when the request carrying it is answered (or failed)
        self._inflight: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()
        #: blobs found locally (e.g. chunks of the endpoint's own files): never fetched
        self.local: dict[bytes, bytes] = {}
        self.fetched_bytes = 0

    def prefetch(self, ids: Collection[bytes]) -> None:
        with self._lock:
            for i in ids:
                if i not in self.local:
                    self._queue[i] = None

    def _batch(self, first: bytes) -> list[bytes]:
        """The ids of the next request: ``first`` and queued ones nobody has or fetches."""
        batch = [first]
        for i in self._queue:  # not mutated in this loop
            if len(batch) >= BATCH:
                break
            if i != first and i not in self._have and i not in self._inflight:
                batch.append(i)
        return batch

    def _load(self, batch: list[bytes], done: threading.Event) -> None:
        try:
            out = self._fetch(batch)
            if not 1 <= len(out) <= len(batch):
                raise IntegrityError("the server answered a blob request with something else")
            got: list[tuple[bytes, bytes]] = []
            for bid, data in zip(batch[: len(out)], out, strict=True):
                if not isinstance(data, bytes):
                    raise IntegrityError("the server answered a blob request with something else")
                if self._id_key is not None and blob.blob_id(self._id_key, data) != bid:
                    raise IntegrityError(
                        f"blob {bid.hex()[:16]} from the server does not match its id"
                    )
                got.append((bid, data))
            with self._lock:
                for bid, data in got:
                    self._have[bid] = data
                    self.fetched_bytes += len(data)
                    self._queue.pop(bid, None)
        finally:
            with self._lock:
                for bid in batch:
                    if self._inflight.get(bid) is done:
                        del self._inflight[bid]
            done.set()

    def get(self, bid: bytes) -> bytes:
        while True:
            with self._lock:
                if bid in self.local:
                    return self.local[bid]
                data = self._have.pop(bid, None)
                if data is not None:
                    return data
                waiting = self._inflight.get(bid)
                if waiting is None:
                    batch = self._batch(bid)
                    done = threading.Event()
                    for i in batch:
                        self._inflight[i] = done
            if waiting is not None:
                # Another thread's request carries it (then it is in ``_have``, unless a
                # reader of the same id took it first, or the request failed: ask again).
                waiting.wait()
                continue
            self._load(batch, done)
            # ``bid`` is answered first, so it is in ``_have`` unless the server sent a
            # prefix without it (refused above) or another reader of the same id took it.

    def get_many(self, ids: Iterable[bytes]) -> Iterator[bytes]:
        for bid in ids:
            yield self.get(bid)


def in_batches(source: T) -> BatchedBlobs | T:
    """``source`` read a batch of queued ids at a time when it can read many blobs at
    once (a store: each batch's packs in coalesced ranges, in pack order); else itself.
    For a restore into an empty folder, where every id queued is one a file will ask for."""
    if isinstance(source, ReadsMany):
        return BatchedBlobs(lambda ids: source.open_many(ids, STORE_BATCH))
    return source


def _inflate(item: object) -> bytes:
    """The plaintext of one blob of a ``stored`` answer, ``[raw length, flag, payload]``
    (hashed against its id by ``BatchedBlobs``)."""
    if not (
        isinstance(item, list)
        and len(item) == 3
        and isinstance(item[0], int)
        and isinstance(item[1], int)
        and isinstance(item[2], bytes)
    ):
        raise IntegrityError("the server answered a blob request with something else")
    raw_length, flag, payload = item
    return blob.decompress(flag, payload, raw_length)


def http_blobs(post: Post, id_key: bytes | None = None, *, stored: bool = False) -> BatchedBlobs:
    """Blobs read through a server's ``POST /blobs/read`` (the one client of that route).

    The server decrypts, inflates and verifies each blob and sends its plaintext; with
    ``id_key`` each is hashed against its id here too. With ``stored`` (an agent, whose
    server said it speaks protocol 3) it sends each blob as stored, only decrypted
    (``[raw length, flag, payload]``): the blob is inflated here and hashed against its
    id (``stored`` needs ``id_key``), so the server neither inflates nor hashes."""
    if stored and id_key is None:
        raise ValueError("blobs as stored are hashed by the reader: give the id key")

    def fetch(ids: list[bytes]) -> list[bytes]:
        body: dict[str, Any] = {"ids": [i.hex() for i in ids]}
        if stored:
            out = msgpack.unpackb(post("/blobs/read", {**body, "stored": True}), raw=False)
            return [_inflate(item) for item in out] if isinstance(out, list) else []
        out = msgpack.unpackb(post("/blobs/read", body), raw=False)
        return out if isinstance(out, list) else []

    return BatchedBlobs(fetch, id_key)
