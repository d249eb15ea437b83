"""Rebuild the chunk index (and the snapshot list) from the packs alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lamina.errors import LaminaError
from lamina.store.blob import BlobKind
from lamina.store.pack import (
    FOOTER,
    PackEntry,
    pack_name_from_object,
    pack_object_name,
    parse_footer,
    parse_header,
)
from lamina.store.repository import Store

ProgressFn = Callable[[int, int], None]


@dataclass
class RebuildReport:
    packs: int = 0
    blobs: int = 0
    snapshots_recovered: int = 0
    skipped: list[str] = field(default_factory=list)


def rebuild_index(store: Store, progress: ProgressFn | None = None) -> RebuildReport:
    rep = RebuildReport()
    found: list[tuple[str, int, list[PackEntry]]] = []
    objects = list(store.backend.list("packs/"))
    for i, (obj, size) in enumerate(objects):
        if progress:
            progress(i, len(objects))
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
    known = {s.id for s in store.catalog.snapshots()}
    epoch = store.catalog.gc_epoch()
    for _, _, entries in found:
        for e in entries:
            if e.kind != BlobKind.SNAPSHOT or e.id.hex() in known:
                continue
            try:
                record = store.load_snapshot_blob(e.id)
            except LaminaError as err:
                rep.skipped.append(f"snapshot {e.id.hex()[:16]}: {err.message}")
                continue
            if store.catalog.add_snapshot(record, epoch):
                known.add(record.id)
                rep.snapshots_recovered += 1
    return rep
