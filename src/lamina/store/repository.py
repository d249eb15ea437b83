"""The store: content-addressed, deduplicated, compressed, encrypted blobs in packs.

This module: opening a store (its config object), reads with a read-window cache,
forgetting snapshots, accounting. Writes go through ``lamina.store.writer.Writer``;
the snapshot record's codec is ``lamina.store.snapshot``.

Write order (never reversed): pack file durable -> its index rows committed ->
trees that name its blobs -> the snapshot that names the trees. Reads go the
other way. Readers verify every blob against its id before handing it on.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lamina.errors import (
    IntegrityError,
    MissingDataError,
    NotFoundError,
    StoreKeyError,
)
from lamina.store import blob
from lamina.store.backends import Backend
from lamina.store.blob import BlobKind
from lamina.store.catalog import PACK_OK, BlobLocation, Catalog, SnapshotRecord
from lamina.store.keys import StoreKeys
from lamina.store.pack import DEFAULT_PACK_SIZE, SMALL_FRACTION, pack_object_name
from lamina.store.reader import RunReader, plan_runs
from lamina.store.snapshot import decode_snapshot
from lamina.store.writer import Writer

CONFIG_NAME = "config"
FORGOTTEN_PREFIX = "forgotten/"
CONFIG_VERSION = 1
_CONFIG_AAD = b"lamina store config v1"
#: Bytes read at once around a requested blob; later blobs of the same pack come from memory.
READ_WINDOW = 4 * 1024 * 1024
_WINDOWS = 8
_PACK_LOCKS = 4096
#: Blob locations remembered between ``prefetch`` and the reads (about 150 bytes each).
_LOCATION_CACHE = 200_000
#: Raw bytes of the blobs one ``open_many`` / ``unseal_many`` returns at most (a prefix).
READ_BATCH = 32 * 1024 * 1024

T = TypeVar("T")
#: A blob decrypted but not inflated: ``(raw length, flag, payload)`` (``blob.decompress``).
StoredBlob = tuple[int, int, bytes]


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
    #: the size packs are written to; ``small_packs`` are under half of it
    pack_size: int = DEFAULT_PACK_SIZE
    small_packs: int = 0
    #: packs with more than half of their blob bytes condemned (gc repacks them)
    sparse_packs: int = 0
    #: pack count and bytes per size bucket: ``{"min", "max" (None: no bound), "packs", "bytes"}``
    pack_histogram: list[dict[str, int | None]] = field(default_factory=list)


def pack_histogram(sizes: Iterable[int], pack_size: int) -> list[dict[str, int | None]]:
    """Packs per size bucket: under 64 KiB, 1 MiB, a quarter, half, one and two pack sizes."""
    edges = sorted(
        {64 * 1024, 1024 * 1024, pack_size // 4, pack_size // 2, pack_size, 2 * pack_size}
    )
    bounds: list[tuple[int, int | None]] = list(zip([0, *edges], [*edges, None], strict=True))
    out: list[dict[str, int | None]] = [
        {"min": lo, "max": hi, "packs": 0, "bytes": 0} for lo, hi in bounds
    ]
    for size in sizes:
        for b in out:
            hi = b["max"]
            if hi is None or size < hi:
                b["packs"] = (b["packs"] or 0) + 1
                b["bytes"] = (b["bytes"] or 0) + size
                break
    return out


def check_config(backend: Backend, keys: StoreKeys) -> None:
    """Check that ``keys`` open the store in ``backend`` (its config object decrypts and
    names their store): a missing store or a wrong key file is a clear error. Reads
    nothing else, so a command that only lists snapshots checks the key this way too."""
    try:
        raw = backend.read(CONFIG_NAME)
    except NotFoundError as e:
        raise NotFoundError(f"no Lamina store at {backend.url}: run `lamina store init`") from e
    try:
        plain = AESGCM(keys.data_key).decrypt(raw[:12], raw[12:], _CONFIG_AAD)
    except (InvalidTag, ValueError) as e:
        raise StoreKeyError(
            f"the key file does not open the store at {backend.url} (wrong key file?)"
        ) from e
    doc = msgpack.unpackb(plain)
    if doc.get("store_id") != keys.store_id:
        raise StoreKeyError(
            f"the store at {backend.url} is {doc.get('store_id')}, "
            f"the key file is for {keys.store_id}"
        )
    if doc.get("v") != CONFIG_VERSION:
        raise IntegrityError(
            f"unsupported store version {doc.get('v')} (expected {CONFIG_VERSION})"
        )


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
        #: pack -> lock held while reading a window of it
        self._pack_locks: dict[str, threading.Lock] = {}
        self._locs: dict[bytes, BlobLocation] = {}
        #: Pack sizes seen by reads, so a window never reaches past a pack's end.
        self._pack_sizes: dict[str, int] = {}
        #: Bytes of small packs this process wrote since the last roll (``store.repack``).
        self._small_written = 0
        self._small_lock = threading.Lock()
        #: Range reads of many blobs at once (``open_many``), on threads of their own.
        self._runs = RunReader(backend.read)

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
        check_config(self.backend, self.keys)

    # --- reading -------------------------------------------------------------
    def _cached(self, loc: BlobLocation) -> bytes | None:
        with self._windows_lock:
            win = self._windows.get(loc.pack)
            if win is not None:
                start, data = win
                if start <= loc.offset and loc.offset + loc.length <= start + len(data):
                    self._windows.move_to_end(loc.pack)
                    return data[loc.offset - start : loc.offset - start + loc.length]
        return None

    def _read_range(self, loc: BlobLocation) -> bytes:
        hit = self._cached(loc)
        if hit is not None:
            return hit
        # Readers of one pack take turns (a restore's writers read neighbouring files):
        # the second finds the window the first read instead of reading it again.
        with self._windows_lock:
            if len(self._pack_locks) > _PACK_LOCKS:
                self._pack_locks.clear()  # only a cache: a reader holding one keeps it
            lock = self._pack_locks.setdefault(loc.pack, threading.Lock())
        with lock:
            hit = self._cached(loc)
            if hit is not None:
                return hit
            return self._read_window(loc)

    def _read_window(self, loc: BlobLocation) -> bytes:
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
        """Plaintexts of ``ids`` in order, read a batch at a time (at most 256 ids or
        ``READ_BATCH`` bytes) in coalesced ranges (``open_many``)."""
        pending: list[bytes] = []

        def drain() -> Iterator[bytes]:
            while pending:
                got = self.open_many(pending)
                del pending[: len(got)]
                yield from got

        for bid in ids:
            pending.append(bid)
            if len(pending) >= 256:
                yield from drain()
        yield from drain()

    def open_many(self, ids: Sequence[bytes], limit: int = READ_BATCH) -> list[bytes]:
        """Plaintexts of a prefix of ``ids``: at least the first, and no blob that would
        take the total past ``limit`` raw bytes. Their packs are read in coalesced ranges
        and the blobs opened on threads (``store.reader``); each is verified (GCM tag,
        size, hash against its id)."""
        keys = self.keys

        def use(bid: bytes, loc: BlobLocation, sealed: bytes) -> bytes:
            return blob.open_sealed(
                keys.data_key, keys.chunking.id_key, loc.kind, bid, sealed, loc.raw_length
            )

        return self._many(ids, limit, use)

    def unseal_many(self, ids: Sequence[bytes], limit: int = READ_BATCH) -> list[StoredBlob]:
        """Like ``open_many``, but each blob only decrypted (its GCM tag checked), not
        inflated nor hashed: ``(raw length, flag, payload)``, for a reader that inflates
        it (``blob.decompress``) and hashes it to its id itself."""
        data_key = self.keys.data_key

        def use(bid: bytes, loc: BlobLocation, sealed: bytes) -> StoredBlob:
            flag, payload = blob.unseal(data_key, loc.kind, bid, sealed)
            return loc.raw_length, flag, payload

        return self._many(ids, limit, use)

    def _many(
        self, ids: Sequence[bytes], limit: int, use: Callable[[bytes, BlobLocation, bytes], T]
    ) -> list[T]:
        locs = self._locate(list(dict.fromkeys(ids)))
        take: list[tuple[bytes, BlobLocation]] = []
        size = 0
        for bid in ids:
            loc = locs.get(bid)
            if loc is None:
                raise MissingDataError(f"blob {bid.hex()[:16]} is not in the store")
            if take and size + loc.raw_length > limit:
                break
            take.append((bid, loc))
            size += loc.raw_length

        def moved(bid: bytes, loc: BlobLocation) -> T:
            return use(bid, *self._reread(bid, loc))

        if len(take) == 1:
            # One blob (a file job of a restore onto files in place, a tree): through the
            # read window, whose neighbours are likely asked next, on this thread.
            bid, loc = take[0]
            try:
                return [use(bid, loc, self._read_range(loc))]
            except NotFoundError:
                return [moved(bid, loc)]
        out = self._runs.read(plan_runs(dict(take).items()), use, moved)
        return [out[bid] for bid, _ in take]

    def _reread(self, bid: bytes, loc: BlobLocation) -> tuple[BlobLocation, bytes]:
        """A blob whose pack is gone, looked up again (a gc may have repacked it meanwhile)
        and read alone: its fresh location and sealed bytes, or ``MissingDataError``."""
        gone = MissingDataError(
            f"pack {loc.pack[:16]} holding blob {bid.hex()[:16]} is missing from the store"
        )
        self._locs.pop(bid, None)
        fresh = self.catalog.locate([bid]).get(bid)
        if fresh is None or fresh.pack == loc.pack:
            raise gone
        try:
            return fresh, self.backend.read(
                pack_object_name(fresh.pack), fresh.offset, fresh.length
            )
        except NotFoundError as e:
            raise gone from e

    # --- writing -------------------------------------------------------------
    def writer(self) -> Writer:
        return Writer(self)

    def is_small(self, size: int) -> bool:
        """A pack of ``size`` bytes is small: rolled into full ones, repacked by gc."""
        return size < self.pack_size * SMALL_FRACTION

    def note_pack(self, size: int) -> None:
        """A writer of this process indexed a pack of ``size`` bytes."""
        if self.is_small(size):
            with self._small_lock:
                self._small_written += size

    def take_small_due(self) -> bool:
        """True (once) when this process wrote a pack size of small packs since the last time."""
        with self._small_lock:
            if self._small_written < self.pack_size:
                return False
            self._small_written = 0
            return True

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
        ok = [p for p in packs if p.state == PACK_OK]
        n = data = trees = raw = stored = condemned = 0
        dead: dict[str, int] = {}
        held: dict[str, int] = {}
        for row in self.catalog.iter_blobs():
            n += 1
            data += row.kind == BlobKind.DATA
            trees += row.kind == BlobKind.TREE
            raw += row.raw_length
            stored += row.length
            condemned += row.condemned
            held[row.pack] = held.get(row.pack, 0) + row.length
            if row.condemned:
                dead[row.pack] = dead.get(row.pack, 0) + row.length
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
            pack_size=self.pack_size,
            small_packs=sum(self.is_small(p.size) for p in ok),
            sparse_packs=sum(2 * d > held[name] for name, d in dead.items()),
            pack_histogram=pack_histogram((p.size for p in ok), self.pack_size),
        )

    def close(self) -> None:
        self._runs.close()
        self.backend.close()
        self.catalog.close()
