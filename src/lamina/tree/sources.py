"""Blob sources for a restore that read through a server, in batches, optionally verified."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import msgpack

from lamina.errors import IntegrityError
from lamina.store import blob

T = TypeVar("T")

#: ids asked for in one request; the server may answer with fewer (a prefix) to
#: bound its response, and the rest are asked for again.
BATCH = 128
#: ids in one ``/blobs/read`` request (the route takes up to 1,024): each request costs
#: the server about 1.6 ms of CPU besides its blobs ("Restores (session 13)").
HTTP_BATCH = 1024

#: Raw bytes one batch read from a store holds at most (``in_batches``).
STORE_BATCH = 16 * 1024 * 1024

#: Background requests in flight at once while reading ahead (``BatchedBlobs.read_ahead``),
#: and the bytes fetched but not yet used above which no new one starts.
AHEAD_REQUESTS = 2
AHEAD_BYTES = 64 * 1024 * 1024

#: ``post(path, json_body) -> response bytes``: one request to the server's API.
Post = Callable[[str, Any], bytes]


@runtime_checkable
class ReadsMany(Protocol):
    """A source that reads many blobs at once (``Store.open_many``: a prefix of ``ids``,
    at most ``limit`` raw bytes, their packs read in coalesced ranges)."""

    def open_many(self, ids: list[bytes], limit: int) -> list[bytes]: ...


class Stored(NamedTuple):
    """A blob as the server sent it with ``stored``: decrypted, not inflated nor verified."""

    raw_length: int
    flag: int
    payload: bytes


#: What a fetch answers per id: a plaintext, or a blob as stored.
Fetched = bytes | Stored


class BatchedBlobs:
    """A ``BlobSource`` over ``fetch(ids) -> plaintexts or blobs as stored``.

    ``prefetch`` queues ids the restore will read next; each request then carries
    the wanted id and the queued ones after it, so a folder of small files costs
    a few requests, not one per file. With ``id_key`` every blob is re-hashed
    against its id before use; a blob as stored (``Stored``) is inflated and hashed
    by the thread that uses it, so the writers share that work.

    Thread-safe: a restore's file writers read at once, so several requests are in
    flight together (over the client's keep-alive connections). An id another
    thread is already fetching is waited for, not asked again.

    ``read_ahead()`` (a restore into an empty folder, where every queued id is one a
    file will ask for): background threads keep up to ``AHEAD_REQUESTS`` requests for
    the queue's next ids in flight while at most ``AHEAD_BYTES`` fetched are not yet
    used, so blobs arrive while the writers write. A background request that fails
    stops reading ahead; the reader that wants one of its ids asks again itself and
    gets the error. Not for a source whose queued ids may be found elsewhere later
    (an agent's deltas) or not be read at all: they would be downloaded for nothing.
    """

    def __init__(
        self,
        fetch: Callable[[list[bytes]], list[Fetched]],
        id_key: bytes | None = None,
        batch: int = BATCH,
    ) -> None:
        self._fetch = fetch
        #: ids in one request at most
        self._size = batch
        self._id_key = id_key
        self._queue: OrderedDict[bytes, None] = OrderedDict()
        self._have: dict[bytes, Fetched] = {}
        #: bytes held in ``_have`` (payloads as fetched)
        self._held = 0
        #: id -> how many times it was queued and not yet taken
        self._uses: dict[bytes, int] = {}
        #: id -> set when the request carrying it is answered (or failed)
        self._inflight: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()
        self._ahead = False
        #: background requests in flight
        self._background = 0
        #: blobs found locally (e.g. chunks of the endpoint's own files): never fetched
        self.local: dict[bytes, bytes] = {}
        #: plaintext bytes of the blobs fetched
        self.fetched_bytes = 0

    def read_ahead(self, on: bool = True) -> BatchedBlobs:
        """Fetch queued ids in the background from now on (see the class), or no longer
        (requests in flight still land); returns self."""
        self._ahead = on
        self._pump()
        return self

    def prefetch(self, ids: Collection[bytes]) -> None:
        with self._lock:
            for i in ids:
                if i in self.local:
                    continue
                self._uses[i] = self._uses.get(i, 0) + 1
                if i not in self._have and i not in self._inflight:
                    self._queue[i] = None
        self._pump()

    def _batch(self, first: bytes | None) -> list[bytes]:
        """The ids of the next request: ``first`` and queued ones nobody has or fetches,
        taken off the queue (a request that fails leaves its ids to the readers)."""
        batch = [] if first is None else [first]
        if first is not None:
            self._queue.pop(first, None)
        while self._queue and len(batch) < self._size:
            i, _ = self._queue.popitem(last=False)
            if i not in self._have and i not in self._inflight:
                batch.append(i)
        return batch

    def _pump(self) -> None:
        """While reading ahead, start background requests for the next queued ids."""
        while self._ahead:
            with self._lock:
                # Full requests only: the queue refills a folder at a time, and a request
                # per refill would be a request per few files. The last ids are asked
                # for by the readers (each such request takes every id queued).
                if (
                    self._background >= AHEAD_REQUESTS
                    or self._held >= AHEAD_BYTES
                    or len(self._queue) < self._size
                ):
                    return
                batch = self._batch(None)
                if not batch:
                    return
                done = threading.Event()
                for i in batch:
                    self._inflight[i] = done
                self._background += 1
            threading.Thread(
                target=self._load_ahead, args=(batch, done), name="lamina-read-ahead", daemon=True
            ).start()

    def _load_ahead(self, batch: list[bytes], done: threading.Event) -> None:
        try:
            self._load(batch, done)
        except BaseException:
            self._ahead = False  # a reader asks again itself and gets the error
        finally:
            with self._lock:
                self._background -= 1
            self._pump()

    def _load(self, batch: list[bytes], done: threading.Event) -> None:
        try:
            out = self._fetch(batch)
            if not 1 <= len(out) <= len(batch):
                raise IntegrityError("the server answered a blob request with something else")
            got = list(zip(batch[: len(out)], out, strict=True))
            for _, item in got:
                if not isinstance(item, bytes | Stored):
                    raise IntegrityError("the server answered a blob request with something else")
            with self._lock:
                for bid, item in got:
                    self._have[bid] = item
                    self._held += _held_size(item)
                    self.fetched_bytes += _plain_size(item)
                    self._queue.pop(bid, None)
                # The ids after an answered prefix go back to the head of the queue.
                for bid in reversed(batch[len(out) :]):
                    self._queue[bid] = None
                    self._queue.move_to_end(bid, last=False)
        finally:
            with self._lock:
                for bid in batch:
                    if self._inflight.get(bid) is done:
                        del self._inflight[bid]
            done.set()

    def _open(self, bid: bytes, item: Fetched) -> bytes:
        """The verified plaintext of a fetched blob: inflated if stored, hashed to its id."""
        if isinstance(item, Stored):
            if self._id_key is None:  # nothing to verify it against: never used unhashed
                raise IntegrityError("a blob as stored cannot be verified without the id key")
            data = blob.decompress(item.flag, item.payload, item.raw_length)
        else:
            data = item
        if self._id_key is not None and blob.blob_id(self._id_key, data) != bid:
            raise IntegrityError(f"blob {bid.hex()[:16]} from the server does not match its id")
        return data

    def get(self, bid: bytes) -> bytes:
        while True:
            with self._lock:
                if bid in self.local:
                    return self.local[bid]
                item = self._have.get(bid)
                if item is not None:
                    self._used(bid, item)
                    waiting = None
                else:
                    waiting = self._inflight.get(bid)
                    if waiting is None:
                        batch = self._batch(bid)
                        done = threading.Event()
                        for i in batch:
                            self._inflight[i] = done
            if item is not None:
                self._pump()
                return self._open(bid, item)
            if waiting is not None:
                # Another thread's request carries it (then it is in ``_have``, unless a
                # reader of the same id took it first, or the request failed: ask again).
                waiting.wait()
                continue
            self._load(batch, done)
            # ``bid`` is answered first, so it is in ``_have`` unless the server sent a
            # prefix without it (refused above) or another reader of the same id took it.

    def _used(self, bid: bytes, item: Fetched) -> None:
        """``bid`` was taken: kept while more uses of it are queued (the same content in
        several files), else dropped."""
        left = self._uses.pop(bid, 1) - 1
        if left > 0:
            self._uses[bid] = left
        else:
            del self._have[bid]
            self._held -= _held_size(item)

    def get_many(self, ids: Iterable[bytes]) -> Iterator[bytes]:
        for bid in ids:
            yield self.get(bid)


def _held_size(item: Fetched) -> int:
    return len(item.payload) if isinstance(item, Stored) else len(item)


def _plain_size(item: Fetched) -> int:
    return item.raw_length if isinstance(item, Stored) else len(item)


def in_batches(source: T, *, store_ahead: bool = True) -> BatchedBlobs | T:
    """``source`` read a batch of queued ids at a time when it can read many blobs at
    once (a store: each batch's packs in coalesced ranges, in pack order), queued ids
    read ahead in the background (``BatchedBlobs.read_ahead``, also turned on for a
    ``BatchedBlobs`` given; for a store only with ``store_ahead``); else itself. For a
    restore into an empty folder, where every id queued is one a file will ask for;
    ``stop_reading_ahead`` when it is done."""
    if isinstance(source, ReadsMany):
        return BatchedBlobs(lambda ids: list(source.open_many(ids, STORE_BATCH))).read_ahead(
            store_ahead
        )
    if isinstance(source, BatchedBlobs):
        return source.read_ahead()
    return source


def stop_reading_ahead(source: object) -> None:
    """No more background requests for ``source`` (``in_batches`` turned them on)."""
    if isinstance(source, BatchedBlobs):
        source.read_ahead(False)


def _stored(item: object) -> Stored:
    """One blob of a ``stored`` answer, ``[raw length, flag, payload]`` (inflated and
    hashed against its id by ``BatchedBlobs`` when used)."""
    if not (
        isinstance(item, list)
        and len(item) == 3
        and isinstance(item[0], int)
        and isinstance(item[1], int)
        and isinstance(item[2], bytes)
    ):
        raise IntegrityError("the server answered a blob request with something else")
    return Stored(*item)


def http_blobs(post: Post, id_key: bytes | None = None, *, stored: bool = False) -> BatchedBlobs:
    """Blobs read through a server's ``POST /blobs/read`` (the one client of that route).

    The server decrypts, inflates and verifies each blob and sends its plaintext; with
    ``id_key`` each is hashed against its id here too. With ``stored`` (an agent, whose
    server said it speaks protocol 3) it sends each blob as stored, only decrypted
    (``[raw length, flag, payload]``): the blob is inflated here and hashed against its
    id (``stored`` needs ``id_key``), so the server neither inflates nor hashes."""
    if stored and id_key is None:
        raise ValueError("blobs as stored are hashed by the reader: give the id key")

    def fetch(ids: list[bytes]) -> list[Fetched]:
        body: dict[str, Any] = {"ids": [i.hex() for i in ids]}
        if stored:
            out = msgpack.unpackb(post("/blobs/read", {**body, "stored": True}), raw=False)
            return [_stored(item) for item in out] if isinstance(out, list) else []
        out = msgpack.unpackb(post("/blobs/read", body), raw=False)
        # plaintexts only: a blob as stored is never taken from an answer not asked as such
        if not (isinstance(out, list) and all(isinstance(i, bytes) for i in out)):
            raise IntegrityError("the server answered a blob request with something else")
        return out

    return BatchedBlobs(fetch, id_key, HTTP_BATCH)
