"""Garbage collection: mark from the roots, condemn the rest, sweep and repack.

Safe while writers run:

1. Note the newest pack (``max_seq``); packs written later are never touched.
2. Mark everything reachable from the roots.
3. Condemn the unreachable rows of old packs and bump the gc epoch, in one
   transaction. From then on writers treat condemned blobs as missing and upload
   them again; a writer that checked its blobs under the old epoch must rescue
   them (un-condemn, or fail cleanly) before its snapshot row goes in.
4. Look at the roots again, so snapshots committed between 2 and 3 are marked,
   and rescue what they reach.
5. Sweep: packs with nothing live are deleted; sparse ones are repacked (sealed
   blobs are copied as they are, no decryption) and then deleted; packs left in
   state ``writing`` by a crash are deleted after a grace period.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lamina.errors import StoreBusyError
from lamina.store.blob import BlobKind
from lamina.store.catalog import PACK_OK, PACK_WRITING
from lamina.store.pack import pack_object_name
from lamina.store.progress import ProgressFn
from lamina.store.repository import Store
from lamina.store.roots import RootSource, Walker


@dataclass
class GcReport:
    reachable: int = 0
    condemned: int = 0
    duplicates: int = 0
    rescued: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    orphans_deleted: int = 0
    trees_restored: int = 0
    bytes_freed: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)


def mark(
    store: Store,
    walk: Walker,
    roots: Iterable[bytes],
    marked: set[bytes],
    trees: Iterable[bytes] = (),
    walked: set[bytes] | None = None,
    confused: set[bytes] | None = None,
) -> set[bytes]:
    """Add everything reachable from ``roots`` and ``trees`` to ``marked``; return what was new.

    What is a tree is decided by how it is referenced, never by its index row: every
    id in ``trees`` and every ``subtree`` a walked tree names is walked as a tree, even
    when the store holds it only as a DATA blob (a device may upload a tree's bytes as
    data; judging by the row would leave the tree's chunks unmarked, and delete them),
    and even when the same id was marked before as a chunk. An id in ``roots`` is
    walked only if a row holds it as a tree (a snapshot record is not one).
    ``walked`` (the trees already walked) carries over between calls on one ``marked``;
    ``confused`` collects the trees held under no TREE row.
    """
    walked = set() if walked is None else walked
    new: set[bytes] = set()
    todo = list(trees)
    fresh = [r for r in roots if r not in marked]
    marked.update(fresh)
    new.update(fresh)
    if fresh:
        todo.extend(store.catalog.locate(fresh, include_condemned=True, kind=BlobKind.TREE))
    while todo:
        batch = list({t for t in todo[:256] if t not in walked})
        todo = todo[256:]
        locs = store.catalog.locate(batch, include_condemned=True, kind=BlobKind.TREE)
        others = [b for b in batch if b not in locs]
        if others:  # held only under another kind: read it all the same (content is verified)
            found = store.catalog.locate(others, include_condemned=True)
            locs.update(found)
            if confused is not None:
                confused.update(found)
        for bid in batch:
            walked.add(bid)
            if bid not in marked:
                marked.add(bid)
                new.add(bid)
            loc = locs.get(bid)
            if loc is None:
                continue
            subtrees, chunks = walk(store.open_blob(bid, loc))
            for c in chunks:
                if c not in marked:
                    marked.add(c)
                    new.add(c)
            todo.extend(t for t in subtrees if t not in walked)
    return new


def _root_ids(sources: Sequence[RootSource]) -> tuple[list[bytes], list[bytes]]:
    """``(blob ids, tree ids)`` of every root."""
    blobs: list[bytes] = []
    trees: list[bytes] = []
    for src in sources:
        for root in src():
            blobs.extend(root.blobs)
            trees.extend(root.trees)
    return blobs, trees


def collect(
    store: Store,
    sources: Sequence[RootSource],
    walk: Walker,
    *,
    orphan_grace: dt.timedelta = dt.timedelta(hours=1),
    repack_below: float = 0.5,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
) -> GcReport:
    cat = store.catalog
    holder = uuid.uuid4().hex
    if not cat.try_lock("gc", holder, dt.timedelta(hours=6)):
        raise StoreBusyError("another garbage collection is running on this store")
    report = GcReport(dry_run=dry_run)
    say = progress or (lambda _m, _d, _t: None)
    try:
        started = dt.datetime.now(dt.UTC)
        max_seq = cat.max_pack_seq()
        marked: set[bytes] = set()
        say("marking", 0, 0)
        walked: set[bytes] = set()
        root_blobs, root_trees = _root_ids(sources)
        confused: set[bytes] = set()
        mark(store, walk, root_blobs, marked, root_trees, walked, confused)
        report.reachable = len(marked)
        dead: set[bytes] = set()
        revived: set[bytes] = set()  # condemned by an earlier, interrupted run, reachable now
        # live blob -> the one row that keeps it, per kind: a tree's row and a data row
        # of the same id are not copies of each other (one blob, one kind)
        kept_row: dict[tuple[bytes, BlobKind], int] = {}
        copies: list[tuple[bytes, int]] = []  # surplus rows of live blobs (concurrent uploads)
        for r in cat.iter_blobs():
            if r.id not in marked:
                if r.pack_seq <= max_seq:
                    dead.add(r.id)
                continue
            if r.condemned:
                revived.add(r.id)
            if (r.id, r.kind) in kept_row:
                if r.pack_seq <= max_seq:
                    copies.append((r.id, r.pack_seq))
            else:
                kept_row[(r.id, r.kind)] = r.pack_seq
        report.condemned = len(dead)
        report.duplicates = len(copies)
        if dry_run:
            report.notes.append(f"would condemn {len(dead)} blobs")
            return report
        say("condemning", 0, 0)
        if revived:
            cat.rescue(revived)
        cat.condemn(dead, max_seq, copies)
        root_blobs, root_trees = _root_ids(sources)
        newly = mark(store, walk, root_blobs, marked, root_trees, walked, confused)
        back = newly & dead
        if back:
            cat.rescue(back)
            report.rescued = len(back)
        say("sweeping", 0, 0)
        writer = store.writer()
        try:
            # Trees held only as DATA (uploaded so, or written before one blob, one kind):
            # store them again as trees, so check finds the store consistent.
            for bid in sorted(confused):
                writer.put(BlobKind.TREE, store.get(bid))
                report.trees_restored += 1
            if confused:
                writer.flush()
            for pack in cat.packs():
                if pack.seq > max_seq:
                    continue
                obj = pack_object_name(pack.name)
                if pack.state == PACK_WRITING:
                    if pack.created < started - orphan_grace:
                        cat.drop_pack(pack.name)
                        store.backend.delete(obj)
                        report.orphans_deleted += 1
                    continue
                if pack.state != PACK_OK:
                    continue
                rows = cat.pack_blobs(pack.name)
                live = [r for r in rows if not r.condemned]
                dead_bytes = sum(r.length for r in rows if r.condemned)
                if not live:
                    # Not drop_pack: a writer may have rescued a blob since we read the
                    # rows; finish_repack drops only what is still condemned.
                    if cat.finish_repack(pack.name, []):
                        store.backend.delete(obj)
                        report.packs_deleted += 1
                        report.bytes_freed += pack.size
                    continue
                live_bytes = sum(r.length for r in live)
                if not dead_bytes or live_bytes >= repack_below * (live_bytes + dead_bytes):
                    continue
                for r in live:
                    sealed = store.backend.read(obj, r.offset, r.length)
                    writer.put_sealed(r.kind, r.id, sealed, r.raw_length)
                writer.flush()
                if cat.finish_repack(pack.name, [r.id for r in live]):
                    store.backend.delete(obj)
                    report.bytes_freed += dead_bytes
                report.packs_repacked += 1
        finally:
            writer.close()
        return report
    finally:
        cat.unlock("gc", holder)
