"""A write session on a store: dedups, seals, packs and uploads blobs, then commits
a snapshot.

Write order (never reversed): pack file durable -> its index rows committed ->
trees that name its blobs -> the snapshot that names the trees.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from lamina.errors import LaminaError, MissingDataError, StoreBusyError
from lamina.store import blob
from lamina.store.batch import TreeBatcher
from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord, rescue_all
from lamina.store.keys import ChunkingSecret
from lamina.store.pack import PackWriter, pack_object_name
from lamina.store.snapshot import decode_snapshot, encode_snapshot

if TYPE_CHECKING:  # the store makes writers; a writer only uses it
    from lamina.store.repository import Store

#: Finished packs waiting for the upload thread (each up to the pack size in memory).
_PACKS_QUEUED = 2
#: How often a blocked put looks whether the upload thread failed (seconds).
_QUEUE_POLL = 0.5
#: Blob ids rescued per catalog call when a gc ran during the session.
#: Commits tried while a gc keeps moving the epoch.
_COMMIT_ATTEMPTS = 5
#: Data ids a session asks about through the catalog before it loads the store's data
#: ids into memory (a small re-backup never pays for the load) ...
_KNOWN_AFTER = 4096
#: ... if the store holds at most this many (about 100 bytes of memory each), and at
#: most this many times the ids asked so far (a row loaded costs about a fifth of an id
#: asked by query), or whatever it holds when it held most of the ids asked (a copy of
#: data it has, as a 2nd endpoint's first backup: the session will ask about it all);
#: asked again each time the ids asked double.
_KNOWN_LIMIT = 500_000
_KNOWN_RATIO = 4


class Writer:
    """A write session: dedups, seals, packs and uploads blobs, then commits a snapshot.

    ``need``, ``put_sealed`` and ``put`` may be called from several threads;
    ``flush``, ``commit_snapshot`` and ``close`` from one, once the others are
    done. Packs are uploaded by one background thread so network writes overlap
    with reading. After an error it is unusable.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.epoch = store.catalog.gc_epoch()
        self._pack = PackWriter(store.keys.data_key)
        #: (id, kind) of every blob this session wrote: one id may be stored under two
        #: kinds (a tree, and a file whose bytes are that tree's encoding).
        self._session: set[tuple[bytes, BlobKind]] = set()
        #: Ids in the open pack: a pack holds one row per id, so the same id under its
        #: other kind goes to the next pack.
        self._pack_ids: set[bytes] = set()
        self._lock = threading.Lock()
        #: The store's data ids (``_known_data``), and how many ids were asked before.
        self._known: set[bytes] | None = None
        self._known_refused = False
        self._asked = 0
        #: of the data ids asked by query, those the store held
        self._held = 0
        self._next_try = _KNOWN_AFTER
        self._known_lock = threading.Lock()
        #: Full packs, finished (joined, hashed, header sealed) by the upload thread: not
        #: under ``_lock``, where every reading thread waited for it.
        self._queue: queue.Queue[PackWriter | None] = queue.Queue(maxsize=_PACKS_QUEUED)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._upload_loop, name="pack-upload", daemon=True)
        self._thread.start()
        self._closed = False
        self.new_blobs = 0
        self.new_raw_bytes = 0
        self.new_stored_bytes = 0
        self.packs_written = 0
        #: Trees put but not yet looked up (one "what is missing?" query per batch);
        #: settled before every flush, so a tree is stored only with or after what it names.
        self._trees = TreeBatcher(lambda ids: self.need(ids, BlobKind.TREE), self._put_tree)

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(flush=et is None)

    def _upload_loop(self) -> None:
        while True:
            full = self._queue.get()
            if full is None:
                return
            if self._error is not None:
                continue
            try:
                item = full.finish()
                cat = self.store.catalog
                cat.begin_pack(item.name)
                self.store.backend.write(pack_object_name(item.name), item.data)
                try:
                    cat.commit_pack(item.name, len(item.data), item.entries)
                except StoreBusyError:  # a gc took it as an orphan: its file is ours to remove
                    with contextlib.suppress(LaminaError):
                        self.store.backend.delete(pack_object_name(item.name))
                    raise
                self.packs_written += 1
                self.store.note_pack(len(item.data))
            except BaseException as e:  # handed to the feeding thread at its next call
                self._error = e

    def _check(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, LaminaError):
                raise err
            raise LaminaError(f"pack upload failed: {err}") from err

    def need(self, ids: Collection[bytes], kind: BlobKind = BlobKind.DATA) -> set[bytes]:
        """The subset of ``ids`` neither stored as ``kind`` nor written as ``kind`` by this session.

        A copy of another kind does not count (one blob, one kind): a tree whose id
        the store holds only as data is needed, and stored again as a tree.
        """
        self._check()
        fresh = {i for i in ids if (i, kind) not in self._session}
        if not fresh:
            return set()
        if kind == BlobKind.DATA:
            known = self._known_data(len(fresh))
            if known is not None:
                return {i for i in fresh if i not in known}
            missing = self.store.catalog.missing(fresh, kind=kind)
            with self._known_lock:
                self._held += len(fresh) - len(missing)
            return missing
        return self.store.catalog.missing(fresh, kind=kind)

    def _known_data(self, asking: int) -> set[bytes] | None:
        """The store's data ids as a set, loaded once the session asked about enough
        (a dict probe per chunk, not a query per batch); None while, or if, it is not.

        A blob a gc condemns after the load is found at commit, as one condemned
        between a query and the commit is (the epoch moved: ``commit_snapshot``).
        """
        with self._known_lock:
            if self._known is None and not self._known_refused:
                self._asked += asking
                if self._asked >= self._next_try:
                    held_most = 2 * self._held >= self._asked
                    limit = _KNOWN_LIMIT if held_most else _KNOWN_RATIO * self._asked
                    self._known = self.store.catalog.known_ids(
                        BlobKind.DATA, min(limit, _KNOWN_LIMIT)
                    )
                    self._next_try = 2 * self._asked
                    self._known_refused = self._known is None and limit >= _KNOWN_LIMIT
            return self._known

    def put_sealed(self, kind: BlobKind, bid: bytes, sealed: bytes, raw_length: int) -> None:
        """Add a sealed blob (skipped if this session wrote it already as ``kind``)."""
        self._put(kind, bid, (sealed,), raw_length)

    def put_payload(
        self, kind: BlobKind, bid: bytes, flag: int, payload: bytes, raw_length: int
    ) -> None:
        """Seal and add a blob given as ``flag``/``payload`` (``blob.seal``), whose content
        the caller checked against ``bid``: its nonce and ciphertext go into the pack as
        they are, not joined first (``blob.seal_parts``)."""
        keys = self.store.keys
        self._put(kind, bid, blob.seal_parts(keys.data_key, kind, bid, flag, payload), raw_length)

    def put_payloads(self, blobs: Sequence[tuple[BlobKind, bytes, int, bytes, int]]) -> None:
        """``put_payload`` of each ``(kind, id, flag, payload, raw length)``, under one lock:
        a bundle's intake adds its blobs in one call, not one each. Their random nonces
        are drawn from the OS in one read, not one each (``os.urandom``, as ``seal``)."""
        self._check()
        size = blob.NONCE.size
        nonces = os.urandom(size * len(blobs))
        sealed = blob.seal_many(self.store.keys.data_key, blobs, nonces)
        add = self._add
        with self._lock:
            for i, (kind, bid, _, _, raw_length) in enumerate(blobs):
                add(kind, bid, (nonces[i * size : (i + 1) * size], sealed[i]), raw_length)

    def put_sealed_many(self, kind: BlobKind, blobs: Iterable[tuple[bytes, bytes, int]]) -> None:
        """``put_sealed`` of each ``(id, sealed blob, raw length)``, under one lock."""
        self._check()
        with self._lock:
            for bid, sealed, raw_length in blobs:
                self._add(kind, bid, (sealed,), raw_length)

    def _put(self, kind: BlobKind, bid: bytes, parts: tuple[bytes, ...], raw_length: int) -> None:
        self._check()
        with self._lock:
            self._add(kind, bid, parts, raw_length)

    def _add(self, kind: BlobKind, bid: bytes, parts: tuple[bytes, ...], raw_length: int) -> None:
        """Add a sealed blob to the open pack (the lock held)."""
        if (bid, kind) in self._session:
            return
        self._session.add((bid, kind))
        if bid in self._pack_ids:
            self._ship()
        self._pack_ids.add(bid)
        self.new_stored_bytes += self._pack.add_parts(kind, bid, parts, raw_length)
        self.new_blobs += 1
        self.new_raw_bytes += raw_length
        if len(self._pack) >= self.store.pack_size:
            self._ship()

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        """Store plaintext (deduplicated); return its id.

        Trees are batched (``TreeBatcher``); they reach the store no later than
        the next ``flush``, like every other blob of the session.
        """
        keys = self.store.keys
        bid = blob.blob_id(keys.chunking.id_key, data)
        if kind == BlobKind.TREE:
            self._check()
            self._trees.add(bid, data)
            return bid
        self._trees.settle()
        if self.need([bid], kind):
            self.put_chunk(kind, bid, data)
        return bid

    def _put_tree(self, bid: bytes, data: bytes) -> None:
        self.put_chunk(BlobKind.TREE, bid, data)

    @property
    def chunking(self) -> ChunkingSecret:
        return self.store.keys.chunking

    @property
    def known_data(self) -> set[bytes] | None:
        """The store's data ids once this session loaded them (``_known_data``), else None;
        a scan's worker processes skip these chunks as ``need`` would."""
        return self._known

    @property
    def data_key(self) -> bytes:
        """The key blobs are sealed with: a scan's worker processes seal with it too."""
        return self.store.keys.data_key

    def put_chunk(self, kind: BlobKind, bid: bytes, data: bytes | memoryview) -> None:
        """Compress, seal and add a blob whose id the caller computed (thread-safe)."""
        flag, payload = blob.compress(data)
        self.put_payload(kind, bid, flag, payload, len(data))

    def _ship(self) -> None:
        if self._pack.count:
            full, self._pack = self._pack, PackWriter(self.store.keys.data_key)
            self._pack_ids = set()
            while True:
                self._check()
                try:
                    self._queue.put(full, timeout=_QUEUE_POLL)
                    return
                except queue.Full:
                    continue

    def flush(self) -> None:
        """Write the open pack and wait until every pack so far is indexed."""
        self._trees.settle()
        with self._lock:
            self._ship()
        self._queue.put(None)
        self._thread.join()
        self._check()
        self._thread = threading.Thread(target=self._upload_loop, name="pack-upload", daemon=True)
        self._thread.start()

    def commit_snapshot(
        self,
        record: SnapshotRecord,
        rescue_walk: Callable[[bytes], Iterable[bytes]],
    ) -> SnapshotRecord:
        """Store the snapshot object, flush, and insert the snapshot row.

        If a garbage collection condemned blobs since this session began,
        ``rescue_walk(root)`` lists every blob the snapshot references so they
        can be un-condemned (or reported missing) before the row is inserted.
        """
        data = encode_snapshot(record)
        sid = self.put(BlobKind.SNAPSHOT, data)
        self.flush()
        record = decode_snapshot(sid, data)
        cat = self.store.catalog
        epoch = self.epoch
        for _ in range(_COMMIT_ATTEMPTS):
            if cat.add_snapshot(record, epoch):
                self.epoch = epoch
                return record
            epoch = cat.gc_epoch()
            gone = rescue_all(cat, itertools.chain([sid], rescue_walk(record.root)))
            if gone:
                raise MissingDataError(
                    f"a garbage collection removed {len(gone)} blobs this snapshot refers to "
                    f"while it was written; run the backup again (nothing was committed)"
                )
        raise LaminaError("could not commit the snapshot: the store's gc epoch keeps moving")

    def close(self, flush: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if flush:
            self._trees.settle()
            self._ship()
        self._queue.put(None)
        self._thread.join()
        if flush:
            self._check()
