"""The store: content-addressed, deduplicated, compressed, encrypted blobs in packs.

Write order (never reversed): pack file durable -> its index rows committed ->
trees that name its blobs -> the snapshot that names the trees. Reads go the
other way. Readers verify every blob against its id before handing it on.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lamina.errors import (
    IntegrityError,
    LaminaError,
    MissingDataError,
    NotFoundError,
    StoreKeyError,
)
from lamina.store import blob
from lamina.store.backends import Backend
from lamina.store.blob import BlobKind
from lamina.store.catalog import BlobLocation, Catalog, SnapshotRecord
from lamina.store.keys import ChunkingSecret, StoreKeys
from lamina.store.pack import DEFAULT_PACK_SIZE, FinishedPack, PackWriter, pack_object_name

CONFIG_NAME = "config"
FORGOTTEN_PREFIX = "forgotten/"
CONFIG_VERSION = 1
_CONFIG_AAD = b"lamina store config v1"
SNAPSHOT_VERSION = 1
#: Bytes read at once around a requested blob; later blobs of the same pack come from memory.
READ_WINDOW = 4 * 1024 * 1024
_WINDOWS = 8
#: Blob locations remembered between ``prefetch`` and the reads (about 150 bytes each).
_LOCATION_CACHE = 200_000


@dataclass(frozen=True)
class StoreStats:
    packs: int
    pack_bytes: int
    blobs: int
    data_blobs: int
    tree_blobs: int
    raw_bytes: int
    stored_bytes: int
    condemned: int
    snapshots: int


class Store:
    """One store: a backend for packs, a catalog for the index, the keys."""

    def __init__(
        self,
        backend: Backend,
        catalog: Catalog,
        keys: StoreKeys,
        pack_size: int = DEFAULT_PACK_SIZE,
    ) -> None:
        self.backend = backend
        self.catalog = catalog
        self.keys = keys
        self.pack_size = pack_size
        self._windows: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._windows_lock = threading.Lock()
        self._locs: dict[bytes, BlobLocation] = {}
        #: Pack sizes seen by reads, so a window never reaches past a pack's end.
        self._pack_sizes: dict[str, int] = {}

    # --- set-up --------------------------------------------------------------
    def write_config(self) -> None:
        """Write the store's config object (first init only)."""
        if self.backend.exists(CONFIG_NAME):
            self.verify_config()
            return
        doc = {
            "v": CONFIG_VERSION,
            "store_id": self.keys.store_id,
            "chunker": [
                self.keys.chunking.min_size,
                self.keys.chunking.avg_size,
                self.keys.chunking.max_size,
            ],
        }
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(self.keys.data_key).encrypt(nonce, msgpack.packb(doc), _CONFIG_AAD)
        self.backend.write(CONFIG_NAME, sealed)

    def verify_config(self) -> None:
        """Check the key file opens this store; a wrong key is a clear error."""
        try:
            raw = self.backend.read(CONFIG_NAME)
        except NotFoundError as e:
            raise NotFoundError(
                f"no Lamina store at {self.backend.url}: run `lamina store init`"
            ) from e
        try:
            plain = AESGCM(self.keys.data_key).decrypt(raw[:12], raw[12:], _CONFIG_AAD)
        except (InvalidTag, ValueError) as e:
            raise StoreKeyError(
                f"the key file does not open the store at {self.backend.url} (wrong key file?)"
            ) from e
        doc = msgpack.unpackb(plain)
        if doc.get("store_id") != self.keys.store_id:
            raise StoreKeyError(
                f"the store at {self.backend.url} is {doc.get('store_id')}, "
                f"the key file is for {self.keys.store_id}"
            )
        if doc.get("v") != CONFIG_VERSION:
            raise IntegrityError(
                f"unsupported store version {doc.get('v')} (expected {CONFIG_VERSION})"
            )

    # --- reading -------------------------------------------------------------
    def _read_range(self, loc: BlobLocation) -> bytes:
        with self._windows_lock:
            win = self._windows.get(loc.pack)
            if win is not None:
                start, data = win
                if start <= loc.offset and loc.offset + loc.length <= start + len(data):
                    self._windows.move_to_end(loc.pack)
                    return data[loc.offset - start : loc.offset - start + loc.length]
        obj = pack_object_name(loc.pack)
        size = self._pack_sizes.get(loc.pack)
        if size is None:
            # One stat (or HEAD) per pack: without it every read in a pack's last
            # window would ask past the end, fail, and fall back to the blob alone.
            size = self._pack_sizes[loc.pack] = self.backend.size(obj)
        want = max(loc.length, min(READ_WINDOW, size - loc.offset))
        try:
            data = self.backend.read(obj, loc.offset, want)
        except IntegrityError:
            self._pack_sizes.pop(loc.pack, None)
            data = self.backend.read(obj, loc.offset, loc.length)
        with self._windows_lock:
            self._windows[loc.pack] = (loc.offset, data)
            while len(self._windows) > _WINDOWS:
                self._windows.popitem(last=False)
        return data[: loc.length]

    def open_blob(self, bid: bytes, loc: BlobLocation) -> bytes:
        try:
            sealed = self._read_range(loc)
        except NotFoundError as e:
            raise MissingDataError(
                f"pack {loc.pack[:16]} holding blob {bid.hex()[:16]} is missing from the store"
            ) from e
        return blob.open_sealed(
            self.keys.data_key, self.keys.chunking.id_key, loc.kind, bid, sealed, loc.raw_length
        )

    def prefetch(self, ids: Collection[bytes]) -> None:
        """Look up the locations of ``ids`` in one query, for the reads that follow.

        A restore calls this once per directory instead of once per file.
        """
        want = [i for i in ids if i not in self._locs]
        if not want:
            return
        if len(self._locs) > _LOCATION_CACHE:
            self._locs.clear()
        self._locs.update(self.catalog.locate(want))

    def _locate(self, ids: list[bytes]) -> dict[bytes, BlobLocation]:
        found: dict[bytes, BlobLocation] = {}
        rest: list[bytes] = []
        for i in ids:
            loc = self._locs.get(i)  # .get: another thread may clear the cache meanwhile
            if loc is None:
                rest.append(i)
            else:
                found[i] = loc
        if rest:
            found.update(self.catalog.locate(rest))
            absent = [i for i in rest if i not in found]
            if absent:
                # A condemned blob is still readable until the collector sweeps it: a
                # writer rescuing its snapshot must walk trees a collection condemned.
                found.update(self.catalog.locate(absent, include_condemned=True))
        return found

    def _open(self, bid: bytes, loc: BlobLocation | None) -> bytes:
        if loc is None:
            raise MissingDataError(f"blob {bid.hex()[:16]} is not in the store")
        try:
            return self.open_blob(bid, loc)
        except MissingDataError:
            # A remembered location may be stale: a gc repacked the blob meanwhile.
            if self._locs.pop(bid, None) is None:
                raise
            fresh = self.catalog.locate([bid]).get(bid)
            if fresh is None:
                raise
            return self.open_blob(bid, fresh)

    def get(self, bid: bytes) -> bytes:
        return self._open(bid, self._locate([bid]).get(bid))

    def get_many(self, ids: Iterable[bytes]) -> Iterator[bytes]:
        """Plaintexts of ``ids`` in order (locations looked up in batches)."""
        pending: list[bytes] = []

        def drain() -> Iterator[bytes]:
            locs = self._locate(pending)
            for bid in pending:
                yield self._open(bid, locs.get(bid))
            pending.clear()

        for bid in ids:
            pending.append(bid)
            if len(pending) >= 256:
                yield from drain()
        if pending:
            yield from drain()

    # --- writing -------------------------------------------------------------
    def writer(self) -> Writer:
        return Writer(self)

    def load_snapshot_blob(self, bid: bytes) -> SnapshotRecord:
        return decode_snapshot(bid, self.get(bid))

    def forget(self, ids: Collection[str]) -> int:
        """Forget snapshots: a durable marker first (so ``rebuild-index`` never brings
        them back), then the rows. Their data goes at the next ``gc``."""
        for sid in ids:
            self.backend.write(f"{FORGOTTEN_PREFIX}{sid}", b"")
        return self.catalog.forget_snapshots(ids)

    def forgotten(self) -> set[str]:
        return {name[len(FORGOTTEN_PREFIX) :] for name, _ in self.backend.list(FORGOTTEN_PREFIX)}

    # --- accounting ----------------------------------------------------------
    def stats(self) -> StoreStats:
        packs = self.catalog.packs()
        n = data = trees = raw = stored = condemned = 0
        for row in self.catalog.iter_blobs():
            n += 1
            data += row.kind == BlobKind.DATA
            trees += row.kind == BlobKind.TREE
            raw += row.raw_length
            stored += row.length
            condemned += row.condemned
        return StoreStats(
            packs=len(packs),
            pack_bytes=sum(p.size for p in packs),
            blobs=n,
            data_blobs=data,
            tree_blobs=trees,
            raw_bytes=raw,
            stored_bytes=stored,
            condemned=condemned,
            snapshots=len(self.catalog.snapshots()),
        )

    def close(self) -> None:
        self.backend.close()
        self.catalog.close()


def encode_snapshot(record: SnapshotRecord) -> bytes:
    return msgpack.packb(
        {
            "v": SNAPSHOT_VERSION,
            "time": record.time.isoformat(),
            "source": record.source,
            "root": record.root,
            "files": record.files,
            "bytes": record.bytes,
            "meta": record.meta,
        },
        use_bin_type=True,
    )


def decode_snapshot(bid: bytes, data: bytes) -> SnapshotRecord:
    what = f"snapshot object {bid.hex()[:16]}"
    try:
        doc = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise IntegrityError(f"{what} is not valid msgpack: {e}") from e
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != SNAPSHOT_VERSION:
        found = doc.get("v") if isinstance(doc, dict) else None
        raise IntegrityError(f"unsupported snapshot version {found!r:.20}")
    root, source, when = doc.get("root"), doc.get("source"), doc.get("time")
    counts = [doc.get("files"), doc.get("bytes")]
    meta = doc.get("meta") or {}
    if not isinstance(root, bytes) or len(root) != blob.ID_SIZE:
        raise IntegrityError(f"{what} is malformed: its root must be a {blob.ID_SIZE}-byte id")
    if not isinstance(source, str) or not isinstance(when, str) or not isinstance(meta, dict):
        raise IntegrityError(f"{what} is malformed: source, time or meta of the wrong type")
    if not all(type(n) is int and n >= 0 for n in counts):
        raise IntegrityError(f"{what} is malformed: files and bytes must be counts")
    try:
        time = dt.datetime.fromisoformat(when)
    except ValueError as e:
        raise IntegrityError(f"{what} is malformed: {e}") from e
    return SnapshotRecord(
        id=bid.hex(),
        time=time,
        source=source,
        root=root,
        files=int(doc["files"]),
        bytes=int(doc["bytes"]),
        meta=dict(meta),
    )


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
        self._queue: queue.Queue[FinishedPack | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._upload_loop, name="pack-upload", daemon=True)
        self._thread.start()
        self._closed = False
        self.new_blobs = 0
        self.new_raw_bytes = 0
        self.new_stored_bytes = 0
        self.packs_written = 0
        #: Trees put but not yet looked up: one "what is missing?" query per batch
        #: instead of one per folder. Added to the pack, in order, by ``_settle_trees``
        #: (before any flush, so a tree is still stored only with or after what it names).
        self._trees: list[tuple[bytes, bytes]] = []
        self._trees_size = 0
        self._trees_lock = threading.Lock()

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(flush=et is None)

    def _upload_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                cat = self.store.catalog
                cat.begin_pack(item.name)
                self.store.backend.write(pack_object_name(item.name), item.data)
                cat.commit_pack(item.name, len(item.data), item.entries)
                self.packs_written += 1
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
        return self.store.catalog.missing(fresh, kind=kind) if fresh else set()

    def put_sealed(self, kind: BlobKind, bid: bytes, sealed: bytes, raw_length: int) -> None:
        """Add a sealed blob (skipped if this session wrote it already as ``kind``)."""
        self._check()
        with self._lock:
            if (bid, kind) in self._session:
                return
            self._session.add((bid, kind))
            if bid in self._pack_ids:
                self._ship()
            self._pack_ids.add(bid)
            self._pack.add(kind, bid, sealed, raw_length)
            self.new_blobs += 1
            self.new_raw_bytes += raw_length
            self.new_stored_bytes += len(sealed)
            if len(self._pack) >= self.store.pack_size:
                self._ship()

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        """Store plaintext (deduplicated); return its id.

        Trees are batched (``_settle_trees``); they reach the store no later than
        the next ``flush``, like every other blob of the session.
        """
        keys = self.store.keys
        bid = blob.blob_id(keys.chunking.id_key, data)
        if kind == BlobKind.TREE:
            self._check()
            with self._trees_lock:
                self._trees.append((bid, data))
                self._trees_size += len(data)
                full = len(self._trees) >= 512 or self._trees_size >= 4 * 1024 * 1024
            if full:
                self._settle_trees()
            return bid
        self._settle_trees()
        if self.need([bid], kind):
            _, sealed = blob.seal_plain(keys.data_key, keys.chunking.id_key, kind, data)
            self.put_sealed(kind, bid, sealed, len(data))
        return bid

    def _settle_trees(self) -> None:
        """Add the batched trees the store lacks to the pack, in the order they were put."""
        with self._trees_lock:  # held throughout: batches reach the pack in order
            if not self._trees:
                return
            batch = self._trees
            self._trees = []
            self._trees_size = 0
            keys = self.store.keys
            need = self.need({bid for bid, _ in batch}, BlobKind.TREE)
            for bid, data in batch:
                if bid in need:
                    need.discard(bid)
                    flag, payload = blob.compress(data)
                    sealed = blob.seal(keys.data_key, BlobKind.TREE, bid, flag, payload)
                    self.put_sealed(BlobKind.TREE, bid, sealed, len(data))

    @property
    def chunking(self) -> ChunkingSecret:
        return self.store.keys.chunking

    def put_chunk(self, kind: BlobKind, bid: bytes, data: bytes | memoryview) -> None:
        """Compress, seal and add a blob whose id the caller computed (thread-safe)."""
        flag, payload = blob.compress(data)
        sealed = blob.seal(self.store.keys.data_key, kind, bid, flag, payload)
        self.put_sealed(kind, bid, sealed, len(data))

    def _ship(self) -> None:
        if self._pack.count:
            finished = self._pack.finish()
            self._pack_ids = set()
            while True:
                self._check()
                try:
                    self._queue.put(finished, timeout=0.5)
                    return
                except queue.Full:
                    continue

    def flush(self) -> None:
        """Write the open pack and wait until every pack so far is indexed."""
        self._settle_trees()
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
        for _ in range(5):
            if cat.add_snapshot(record, epoch):
                self.epoch = epoch
                return record
            epoch = cat.gc_epoch()
            gone: set[bytes] = set()
            batch: list[bytes] = [sid]
            for bid in rescue_walk(record.root):
                batch.append(bid)
                if len(batch) >= 1000:
                    gone |= cat.rescue(batch)
                    batch = []
            gone |= cat.rescue(batch)
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
            self._settle_trees()
            self._ship()
        self._queue.put(None)
        self._thread.join()
        if flush:
            self._check()
