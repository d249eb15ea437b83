"""Rebuild the chunk index (and the snapshot list) from the packs alone."""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina.errors import LaminaError, MissingDataError
from lamina.store.blob import BlobKind
from lamina.store.pack import (
    FOOTER,
    PackEntry,
    pack_name_from_object,
    pack_object_name,
    parse_footer,
    parse_header,
)
from lamina.store.progress import ProgressFn
from lamina.store.repository import Store
from lamina.store.roots import Walker


@dataclass
class RebuildReport:
    packs: int = 0
    blobs: int = 0
    snapshots_recovered: int = 0
    skipped: list[str] = field(default_factory=list)


def rebuild_index(store: Store, walk: Walker, progress: ProgressFn | None = None) -> RebuildReport:
    """Replace the index with what the packs hold; recover snapshots that are whole.

    A snapshot is recovered only if it was not forgotten (``forgotten/`` markers)
    and every blob it reaches is in the rebuilt index.
    """
    rep = RebuildReport()
    found: list[tuple[str, int, list[PackEntry]]] = []
    objects = list(store.backend.list("packs/"))
    for i, (obj, size) in enumerate(objects):
        if progress:
            progress("reading pack headers", i, len(objects))
        name = pack_name_from_object(obj)
        if name is None:
            continue
        try:
            tail = store.backend.read(pack_object_name(name), -min(size, 64 * 1024))
            header_len = parse_footer(tail, size)
            start = size - FOOTER.size - header_len
            if header_len + FOOTER.size <= len(tail):
                sealed = tail[len(tail) - FOOTER.size - header_len : len(tail) - FOOTER.size]
            else:
                sealed = store.backend.read(pack_object_name(name), start, header_len)
            entries = parse_header(store.keys.data_key, sealed, start)
        except LaminaError as err:
            rep.skipped.append(f"pack {name[:16]}: {err.message}")
            continue
        found.append((name, size, entries))
        rep.packs += 1
        rep.blobs += len(entries)
    store.catalog.replace_index(found)
    known = {s.id for s in store.catalog.snapshots()} | store.forgotten()
    epoch = store.catalog.gc_epoch()
    for _, _, entries in found:
        for e in entries:
            if e.kind != BlobKind.SNAPSHOT or e.id.hex() in known:
                continue
            try:
                record = store.load_snapshot_blob(e.id)
                _whole(store, walk, record.root)
            except LaminaError as err:
                rep.skipped.append(f"snapshot {e.id.hex()[:16]}: {err.message}")
                continue
            if store.catalog.add_snapshot(record, epoch):
                known.add(record.id)
                rep.snapshots_recovered += 1
    return rep


def _whole(store: Store, walk: Walker, root: bytes) -> None:
    """Raise MissingDataError unless every blob under ``root`` is indexed."""
    todo, seen = [root], set()
    while todo:
        tid = todo.pop()
        if tid in seen:
            continue
        seen.add(tid)
        trees, chunks = walk(store.get(tid))
        gone = store.catalog.missing(chunks)
        if gone:
            raise MissingDataError(f"{len(gone)} of its chunks are not in any pack")
        todo.extend(trees)
