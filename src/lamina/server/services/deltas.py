"""File deltas for devices that hold an old version of a file (``POST /blobs/delta``).

A layer update or a restore onto an endpoint that has an older copy of a file
sends the new version as a zstd frame against the old one (``store.delta``),
not its changed chunks whole. The server computes each delta once and keeps it
in ``DeltaCache`` under DATA/deltas, keyed by the (old, new) pair of chunk-id
lists; the device verifies what the delta gives against the new version's chunk
ids before using it.

Cache entry layout (version 1), one file per (old, new) pair, written to a
temporary name, fsynced and renamed (a crash leaves a whole entry or none)::

    magic  b"LMDC"     4 bytes
    version            1 byte   (1)
    digest             32 bytes BLAKE3 of the payload
    payload            the delta (a zstd frame)

An entry whose magic, version or digest does not match is removed and the delta
computed again. The folder is bounded (``ServerSettings.delta_cache``): after a
write the least recently used entries (file mtime, touched on each hit) go
until it fits.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from pathlib import Path
from typing import NamedTuple

import blake3
from sqlalchemy import Engine

from lamina.errors import ForbiddenError
from lamina.protocol.schemas import DeltaItem
from lamina.server.services import access
from lamina.server.services.rows import Cvd
from lamina.server.services.sync import parse_ids
from lamina.store.delta import MAX_FILE, make_delta
from lamina.store.repository import Store

CACHE_VERSION = 1
#: The version of ``/blobs/delta``'s answer: msgpack ``{"v": 1, "deltas": [bytes | None]}``.
ANSWER_VERSION = 1
#: magic, version, BLAKE3 digest of the payload
HEADER = struct.Struct(">4sB32s")
MAGIC = b"LMDC"
#: Delta bytes one answer carries at most; the items after it get None (chunks).
ANSWER_LIMIT = 32 * 1024 * 1024
#: Deltas computed at once per server process: each holds both versions (up to
#: 2 x 64 MiB) and a core for a second or two; other requests wait their turn.
COMPUTING = threading.BoundedSemaphore(2)


class DeltaKey(NamedTuple):
    base: tuple[bytes, ...]
    target: tuple[bytes, ...]

    def name(self) -> str:
        h = blake3.blake3(b"lamina delta v1\0")
        for part in (self.base, self.target):
            h.update(len(part).to_bytes(4, "big"))
            h.update(b"".join(part))
        return h.hexdigest()


class DeltaCache:
    """Deltas on disk, bounded to ``max_bytes``; safe for several threads and processes
    (entries are written whole under a unique temporary name, then renamed)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def _path(self, key: DeltaKey) -> Path:
        return self.folder / f"{key.name()}.delta"

    def get(self, key: DeltaKey) -> bytes | None:
        """The cached delta, or None (absent, or damaged: then the entry is removed)."""
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) >= HEADER.size:
            magic, version, digest = HEADER.unpack_from(raw)
            payload = raw[HEADER.size :]
            if (
                magic == MAGIC
                and version == CACHE_VERSION
                and blake3.blake3(payload).digest() == digest
            ):
                with contextlib.suppress(OSError):
                    os.utime(path)
                return payload
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None

    def put(self, key: DeltaKey, delta: bytes) -> None:
        if len(delta) + HEADER.size > self.max_bytes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(delta):x}.tmp")
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, CACHE_VERSION, blake3.blake3(delta).digest()))
            f.write(delta)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._trim()

    def _trim(self) -> None:
        entries: list[tuple[float, int, str]] = []
        for e in os.scandir(self.folder):
            with contextlib.suppress(FileNotFoundError):
                st = e.stat(follow_symlinks=False)
                entries.append((st.st_mtime, st.st_size, e.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size


def cache_for(data: Path, max_bytes: int) -> DeltaCache:
    return DeltaCache(data / "deltas", max_bytes)


def _read_file(store: Store, ids: list[bytes]) -> bytes:
    return b"".join(store.get_many(ids))


def delta_for(
    store: Store, cache: DeltaCache, base: list[bytes], target: list[bytes]
) -> bytes | None:
    """The delta from ``base`` to ``target`` if it is smaller than the target's chunks
    the base lacks (what the device would download otherwise), else None. Sizes come
    from the index: versions above ``MAX_FILE`` (or not stored) get None unread."""
    where = store.catalog.locate(set(base) | set(target))
    if not all(i in where for i in (*base, *target)):
        return None
    have = set(base)
    need = sum(where[i].raw_length for i in target if i not in have)
    sizes = [sum(where[i].raw_length for i in ids) for ids in (base, target)]
    if need == 0 or max(sizes) > MAX_FILE:
        return None
    key = DeltaKey(tuple(base), tuple(target))
    delta = cache.get(key)
    if delta is None:
        with COMPUTING:
            delta = cache.get(key)  # another request may have computed it meanwhile
            if delta is None:
                delta = make_delta(_read_file(store, base), _read_file(store, target))
                cache.put(key, delta)
    return delta if len(delta) < need else None


def deltas_for_device(
    engine: Engine,
    store: Store,
    cache: DeltaCache,
    trees: access.TreeCache,
    device_id: str,
    cvd: Cvd,
    items: list[DeltaItem],
) -> list[bytes | None]:
    """One delta (or None) per item, for a device: the new version's chunks must be
    readable by it (``access.check_read``: else ForbiddenError, as ``/blobs/read``);
    an old version it does not own gets None, as if no delta could be made."""
    out: list[bytes | None] = []
    size = 0
    for item in items:
        base, target = parse_ids(item.base), parse_ids(item.target)
        access.check_read(engine, store, trees, device_id, cvd, target)
        delta: bytes | None = None
        if base and size < ANSWER_LIMIT:
            try:
                access.check_read(engine, store, trees, device_id, cvd, base)
            except ForbiddenError:
                base = []
            if base:
                delta = delta_for(store, cache, base, target)
        size += len(delta or b"")
        out.append(delta)
    return out
