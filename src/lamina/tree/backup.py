"""One backup: scan a folder into the store and commit a snapshot."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

from lamina.store.catalog import SnapshotRecord
from lamina.store.progress import AdvanceFn
from lamina.store.repository import Store
from lamina.tree.cache import FilesCache
from lamina.tree.collector import fewer_collections
from lamina.tree.model import references
from lamina.tree.scan import Scanner, ScanStats
from lamina.tree.scan_proc import scan_processes
from lamina.tree.scan_scope import ExcludeFn, PruneFn


class ScanOptions(TypedDict, total=False):
    """``backup``'s keyword arguments for its ``Scanner``, which says what each does."""

    exclude: ExcludeFn | None
    prune: PruneFn | None
    progress: AdvanceFn | None
    workers: int | None
    one_file_system: bool
    reuse_trees: bool
    processes: int
    process_after: int


@dataclass
class BackupResult:
    snapshot: SnapshotRecord
    stats: ScanStats
    new_blobs: int
    new_raw_bytes: int
    new_stored_bytes: int


def walk_blobs(store: Store, *roots: bytes) -> Iterator[bytes]:
    """Every blob id the trees ``roots`` reference, trees included, each tree decoded
    once; read a folder level at a time so a remote store prefetches each level."""
    seen: set[bytes] = set()
    level = list(dict.fromkeys(roots))
    while level:
        store.prefetch(level)
        below: list[bytes] = []
        for tid in level:
            if tid in seen:
                continue
            seen.add(tid)
            yield tid
            trees, chunks = references(store.get(tid))
            yield from chunks
            below.extend(t for t in trees if t not in seen)
        level = below


def backup(
    store: Store,
    path: Path,
    *,
    source: str | None = None,
    cache_path: Path | None = None,
    meta: dict[str, Any] | None = None,
    **scan: Unpack[ScanOptions],
) -> BackupResult:
    path = path.resolve()
    source = source or f"{socket.gethostname()}:{path}"
    # the scan allocates a few objects per entry, nearly all freed by reference counting:
    # the collector's full passes over the imported modules found next to nothing
    with fewer_collections(), store.writer() as writer:
        cache = FilesCache(cache_path, store.keys.store_id, writer.epoch) if cache_path else None
        try:
            scan.setdefault("processes", scan_processes())
            scanner = Scanner(writer, cache, **scan)
            root = scanner.scan(path)
            if cache is not None:
                cache.settle()
            st = os.stat(path)
            record = SnapshotRecord(
                id="",
                time=dt.datetime.now(dt.UTC),
                source=source,
                root=root,
                files=scanner.stats.files,
                bytes=scanner.stats.bytes,
                meta={
                    "path": str(path),
                    "root_mode": st.st_mode & 0o7777,
                    "root_uid": st.st_uid,
                    "root_gid": st.st_gid,
                    "root_mtime": st.st_mtime_ns,
                    "errors": len(scanner.stats.errors),
                    **(meta or {}),
                },
            )
            record = writer.commit_snapshot(record, lambda r: walk_blobs(store, r))
            if cache is not None:
                cache.commit(writer.epoch)
        finally:
            if cache is not None:
                cache.close()
        return BackupResult(
            record, scanner.stats, writer.new_blobs, writer.new_raw_bytes, writer.new_stored_bytes
        )
