"""Garbage collection: mark from the roots, condemn the rest, sweep and repack.

Safe while writers run:

1. Note the newest pack (``max_seq``); packs written later are never touched.
2. Mark everything reachable from the roots.
3. Condemn the unreachable rows of old packs and bump the gc epoch, in one
   transaction. From then on writers treat condemned blobs as missing and upload
   them again; a writer that checked its blobs under the old epoch must rescue
   them (un-condemn, or fail cleanly) before its snapshot row goes in. Records of who
   holds what kept beside the store (``owners``: the server's ownership rows) that
   their owners' own roots no longer reach go in the same transaction.
4. Look at the roots again, so snapshots committed between 2 and 3 are marked,
   and rescue what they reach.
5. Sweep: packs with nothing live are deleted; sparse ones (under ``REPACK_BELOW``
   of their bytes live) and small ones (under half the pack size, two or more) are
   repacked together into full packs (sealed blobs are copied as they are, no
   decryption; ``store.repack``'s crash-safe order) and then deleted; packs left in
   state ``writing`` by a crash are deleted after a grace period.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lamina.store.blob import BlobKind
from lamina.store.catalog import (
    PACK_DROPPING,
    PACK_OK,
    PACK_WRITING,
    BlobRow,
    PackInfo,
    RootsMoved,
)
from lamina.store.locks import HeldLock
from lamina.store.pack import pack_object_name
from lamina.store.progress import ProgressFn
from lamina.store.repack import move_live
from lamina.store.repository import Store
from lamina.store.roots import RootSource, Walker

#: A pack with less than this share of its blob bytes live is repacked.
REPACK_BELOW = 0.5
#: The gc lock's expiry, renewed every quarter of it while the gc runs (``HeldLock``):
#: the time a frozen gc on another machine holds the store.
LOCK_TTL = dt.timedelta(minutes=20)


class Owners(Protocol):
    """Who holds which blobs, kept beside the store (the server's ``cvd_blobs``:
    ``lamina.db.ownership``): what each owner's own roots no longer reach is taken back
    with the condemn, so that whether the gc kept a blob (for someone else) never shows
    to an owner through a record the gc left behind."""

    def plan(self, store: Store, walk: Walker) -> None:
        """Read the records and walk each owner's roots: decide what goes."""
        ...

    def settled(self) -> bool:
        """Whether every owner's root now is one ``plan`` or ``catch_up`` walked."""
        ...

    def catch_up(self, store: Store, walk: Walker) -> None:
        """Walk the owners' roots that appeared since; what they reach stays."""
        ...

    def drop(self, conn: Any) -> None:
        """Delete what goes, in the condemn's transaction (``conn``, the catalog's)."""
        ...

    @property
    def count(self) -> int:
        """The records that go (or went)."""
        ...


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
    #: ownership records taken back (``Owners``): held by nothing their owner keeps
    owner_rows: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    #: the packs repacked (or, with ``dry_run``, that would be)
    repack: list[RepackEntry] = field(default_factory=list)


@dataclass(frozen=True)
class RepackEntry:
    pack: str
    size: int
    live_bytes: int
    #: ``sparse`` (mostly dead) or ``small`` (under half the pack size)
    reason: str


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


@dataclass
class _Marked:
    """What the mark step found: every live id, the trees walked, trees held as data."""

    ids: set[bytes] = field(default_factory=set)
    walked: set[bytes] = field(default_factory=set)
    confused: set[bytes] = field(default_factory=set)


@dataclass
class GcPlan:
    """What a collection would do, decided from the catalog before anything changes
    (as restic's prune plans before it deletes)."""

    started: dt.datetime
    max_seq: int
    marked: _Marked
    #: packs left ``writing`` since before this are orphans of interrupted writers
    orphaned_before: dt.datetime
    #: blobs no root reaches, in packs that existed when the run began
    dead: set[bytes] = field(default_factory=set)
    #: condemned by an earlier, interrupted run and reachable now
    revived: set[bytes] = field(default_factory=set)
    #: surplus rows of live blobs (concurrent uploads): (id, pack_seq)
    copies: list[tuple[bytes, int]] = field(default_factory=list)
    #: the packs the sweep would delete, repack or drop as orphans
    packs: list[PackAction] = field(default_factory=list)


@dataclass(frozen=True)
class PackAction:
    """One pack's fate: ``delete`` (nothing live), ``repack`` (mostly dead; live blobs
    copied to a new pack), ``orphan`` (left ``writing`` by an interrupted writer)."""

    pack: PackInfo
    action: Literal["delete", "repack", "orphan"]
    live: tuple[BlobRow, ...] = ()
    #: bytes this frees: the whole pack, or its dead blobs when it is repacked
    freed: int = 0
    #: why a pack is repacked: ``sparse`` (mostly dead) or ``small`` (under half a pack)
    reason: str = ""

    def describe(self) -> RepackEntry:
        return RepackEntry(
            self.pack.name, self.pack.size, sum(r.length for r in self.live), self.reason
        )


def collect(
    store: Store,
    sources: Sequence[RootSource],
    walk: Walker,
    *,
    orphan_grace: dt.timedelta = dt.timedelta(hours=1),
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    fail_after: int = -1,
    owners: Owners | None = None,
) -> GcReport:
    """Collect garbage in three steps: plan (mark, classify rows, decide each pack's
    fate), stats (what the plan frees, the figures ``--dry-run`` prints), execute
    (condemn, mark again, rescue, sweep). The sweep decides each pack again from its
    rows as they are then: a backup running meanwhile may have rescued blobs. With
    ``owners``, their records their own roots no longer reach go with the condemn."""
    say = progress or (lambda _m, _d, _t: None)
    # A killed gc's lock is taken over, not waited out; a live one's is renewed however
    # long its mark takes, and it stops if it lost the lock (``HeldLock``).
    with HeldLock(
        store.catalog, "gc", LOCK_TTL, "another garbage collection is running on this store"
    ) as lock:
        say("marking", 0, 0)
        plan = plan_gc(store, sources, walk, orphan_grace)
        if owners is not None:
            owners.plan(store, walk)
        report = stats(plan)
        report.dry_run = dry_run
        report.owner_rows = owners.count if owners is not None else 0
        if dry_run:
            report.notes.append(f"would condemn {len(plan.dead)} blobs")
            return report
        say("condemning", 0, 0)
        report.rescued = _condemn(store, sources, walk, plan, owners, lock.check)
        report.owner_rows = owners.count if owners is not None else 0
        say("sweeping", 0, 0)
        _execute(store, plan, report, fail_after, lock.check)
        return report


def plan_gc(
    store: Store,
    sources: Sequence[RootSource],
    walk: Walker,
    orphan_grace: dt.timedelta = dt.timedelta(hours=1),
) -> GcPlan:
    """Mark what the roots reach, classify every row, and decide each pack's fate as
    if the dead blobs were condemned (nothing is changed)."""
    cat = store.catalog
    started = dt.datetime.now(dt.UTC)
    plan = GcPlan(started, cat.max_pack_seq(), _Marked(), orphaned_before=started - orphan_grace)
    m = plan.marked
    root_blobs, root_trees = _root_ids(sources)
    mark(store, walk, root_blobs, m.ids, root_trees, m.walked, m.confused)
    # live blob -> the one row that keeps it, per kind: a tree's row and a data row
    # of the same id are not copies of each other (one blob, one kind)
    kept_row: dict[tuple[bytes, BlobKind], int] = {}
    for r in cat.iter_blobs():
        if r.id not in m.ids:
            if r.pack_seq <= plan.max_seq:
                plan.dead.add(r.id)
            continue
        if r.condemned:
            plan.revived.add(r.id)
        if (r.id, r.kind) in kept_row:
            if r.pack_seq <= plan.max_seq:
                plan.copies.append((r.id, r.pack_seq))
        else:
            kept_row[(r.id, r.kind)] = r.pack_seq
    copies = set(plan.copies)

    def will_be_condemned(r: BlobRow) -> bool:
        if (r.id, r.pack_seq) in copies or r.id in plan.dead:
            return True
        return r.condemned and r.id not in plan.revived

    for pack in cat.packs():
        if pack.seq <= plan.max_seq:
            rows = cat.pack_blobs(pack.name) if pack.state == PACK_OK else []
            action = _decide(store, pack, rows, will_be_condemned, plan)
            if action is not None:
                plan.packs.append(action)
    plan.packs = _lone_small_stays(plan.packs)
    return plan


def _lone_small_stays(actions: list[PackAction]) -> list[PackAction]:
    """A small pack is repacked only with others: alone it would come out as small."""
    repacked = [a for a in actions if a.action == "repack"]
    if len(repacked) == 1 and repacked[0].reason == "small":
        return [a for a in actions if a is not repacked[0]]
    return actions


def _decide(
    store: Store,
    pack: PackInfo,
    rows: list[BlobRow],
    condemned: Callable[[BlobRow], bool],
    plan: GcPlan,
) -> PackAction | None:
    """One pack's fate from its rows; None: it stays as it is."""
    if pack.state == PACK_DROPPING:  # taken by a gc that stopped while deleting it
        return PackAction(pack, "orphan", freed=pack.size)
    if pack.state == PACK_WRITING:
        if pack.created < plan.orphaned_before:
            return PackAction(pack, "orphan", freed=pack.size)
        return None
    if pack.state != PACK_OK:
        return None
    live = tuple(r for r in rows if not condemned(r))
    dead_bytes = sum(r.length for r in rows if condemned(r))
    if not live:
        return PackAction(pack, "delete", freed=pack.size)
    live_bytes = sum(r.length for r in live)
    if dead_bytes and live_bytes < REPACK_BELOW * (live_bytes + dead_bytes):
        return PackAction(pack, "repack", live, freed=dead_bytes, reason="sparse")
    if store.is_small(pack.size):
        return PackAction(pack, "repack", live, freed=dead_bytes, reason="small")
    return None


def stats(plan: GcPlan) -> GcReport:
    """The figures of a plan: what executing it would remove and free."""
    report = GcReport(
        reachable=len(plan.marked.ids),
        condemned=len(plan.dead),
        duplicates=len(plan.copies),
        trees_restored=len(plan.marked.confused),
    )
    for a in plan.packs:
        if a.action == "delete":
            report.packs_deleted += 1
        elif a.action == "repack":
            report.packs_repacked += 1
        else:
            report.orphans_deleted += 1
        report.bytes_freed += a.freed if a.action != "orphan" else 0
        if a.action == "repack":
            report.repack.append(a.describe())
    return report


def _condemn(
    store: Store,
    sources: Sequence[RootSource],
    walk: Walker,
    plan: GcPlan,
    owners: Owners | None = None,
    check: Callable[[], None] = lambda: None,
) -> int:
    """Condemn the dead rows once every root is marked, then mark again. Returns how
    many blobs the roots that appeared meanwhile brought back.

    The condemn asks, with the store's epoch locked, whether a root appeared since the
    mark (``settled``): a snapshot committed meanwhile, under the old epoch, makes it
    condemn nothing; its blobs are marked and the condemn tried again. A snapshot
    committed after the condemn comes under the new epoch, and its writer rescues what
    it names. So no condemned row is ever one a committed snapshot names: a gc killed
    at any point leaves nothing a roll of small packs or a later sweep could take
    (before session 23 the condemn came first and the mark of the new roots after, and a
    gc killed or failing between them lost the new snapshot's data). The mark after is
    for roots made meanwhile that name blobs condemned a moment ago (their writers
    rescue too: ``Writer.commit_snapshot``, ``server/services/held.py``). The
    ``owners``' records go in the condemn's transaction, asked as settled as the roots."""
    cat = store.catalog
    m = plan.marked
    back: set[bytes] = set()

    def catch_up() -> None:
        """Mark the roots not marked yet; what they reach leaves the dead."""
        root_blobs, root_trees = _root_ids(sources)
        newly = mark(store, walk, root_blobs, m.ids, root_trees, m.walked, m.confused)
        back.update(newly & plan.dead)
        plan.dead -= newly
        if owners is not None:
            owners.catch_up(store, walk)

    def settled() -> bool:
        return _all_marked(sources, m) and (owners is None or owners.settled())

    def marked_now() -> bool:
        # The last try: snapshots kept landing between the tries, so they are marked
        # with the epoch locked (writers wait meanwhile). That takes them out of
        # ``plan.dead``, the very set the condemn reads next: none is condemned.
        catch_up()
        return True

    if plan.revived:
        cat.rescue(plan.revived)
    for attempt in range(1, CONDEMN_TRIES + 1):
        last = attempt == CONDEMN_TRIES
        check()  # (still the lock's holder: before each try, after each catch-up's mark)
        try:
            cat.condemn(
                plan.dead,
                plan.max_seq,
                plan.copies,
                settled=marked_now if last else settled,
                also=owners.drop if owners is not None else None,
            )
            break
        except RootsMoved:
            catch_up()  # (nothing was condemned: what it finds just leaves the dead)
    before = set(back)
    catch_up()
    if back - before:  # condemned a moment ago, named by a root made since
        cat.rescue(back - before)
    return len(back)


#: Tries of the condemn while snapshots keep landing; the last marks them with the epoch
#: locked, so a busy store's gc ends.
CONDEMN_TRIES = 8


def _all_marked(sources: Sequence[RootSource], m: _Marked) -> bool:
    root_blobs, root_trees = _root_ids(sources)
    return all(r in m.ids for r in root_blobs) and all(t in m.walked for t in root_trees)


def _execute(
    store: Store,
    plan: GcPlan,
    report: GcReport,
    fail_after: int = -1,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Sweep: each pack decided again from its rows as they are now (the final check)."""
    cat = store.catalog
    report.packs_deleted = report.packs_repacked = report.orphans_deleted = 0
    report.bytes_freed = report.trees_restored = 0
    report.repack = []
    repack: list[PackAction] = []
    writer = store.writer()
    try:
        # Trees held only as DATA (uploaded so, or written before one blob, one kind):
        # store them again as trees, so check finds the store consistent.
        for bid in sorted(plan.marked.confused):
            writer.put(BlobKind.TREE, store.get(bid))
            report.trees_restored += 1
        if plan.marked.confused:
            writer.flush()
        for pack in cat.packs():
            if pack.seq > plan.max_seq:
                continue
            rows = cat.pack_blobs(pack.name) if pack.state == PACK_OK else []
            a = _decide(store, pack, rows, lambda r: r.condemned, plan)
            if a is None:
                continue
            check()  # (still the lock's holder: before each pack it deletes)
            obj = pack_object_name(pack.name)
            if a.action == "orphan":
                # Taken first, while it is still ``writing``: a writer still at it (an
                # orphan grace shorter than its write) commits first and keeps it, or
                # finds it taken and acknowledges nothing. Then the file, while the row
                # still names it, then the row.
                if cat.claim_orphan(pack.name):
                    store.backend.delete(obj)
                    cat.drop_pack(pack.name)
                    report.orphans_deleted += 1
            elif a.action == "delete":
                # Not drop_pack: a writer may have rescued a blob since we read the
                # rows; finish_repack drops only what is still condemned.
                if cat.finish_repack(pack.name, []):  # (its row left ``writing``)
                    store.backend.delete(obj)
                    cat.drop_pack(pack.name)
                    report.packs_deleted += 1
                    report.bytes_freed += a.freed
            else:
                repack.append(a)
    finally:
        writer.close()
    repack = _lone_small_stays(repack)
    if repack:
        # all together: their live blobs fill full packs, not one new pack per old one
        moved = move_live(store, [(a.pack, a.live) for a in repack], fail_after, check)
        report.packs_repacked = moved.packs_read
        report.bytes_freed += sum(a.freed for a in repack)
        report.repack = [a.describe() for a in repack]
    # Writes killed before their rename left hidden temporary files: older than the
    # orphans' grace, no writer is still at them.
    temps = store.backend.remove_stale_temps(plan.orphaned_before.timestamp())
    if temps:
        report.notes.append(f"removed {temps} temporary files of interrupted writes")
