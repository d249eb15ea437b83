"""Ownership the gc takes back: each CVD's ``cvd_blobs`` rows its own roots no longer reach.

A row says the CVD's device proved it holds a blob (``server/services/access.py``): it
uploaded it, its snapshots name it, or it read it from a tree delivered to it. Kept for
ever, the row of a blob the CVD uploaded and never committed (or committed and let
retention forget) told its device, after a gc, whether another endpoint holds that
content: collected, the blob was "send it"; kept for the other endpoint, "present",
readable, committable (the content oracle, ``docs/design.md``). So the gc takes back,
in the transaction that condemns (``gc.Owners``), every row that existed when it read
them and that the CVD's own snapshots and the trees delivered to its device (its tasks'
``root`` or ``delta``, whatever their state) do not reach. A row recorded after that
read stays until the next gc: its blob was uploaded or taken since, so this gc keeps it
whoever else holds it. A commit that checked its blobs before the condemn and lands
after it records its whole snapshot again (``sync``: the epoch moved under it).

Each CVD's reach is walked on its own, the trees' listings cached across CVDs (they
share most of their trees; at most ``LISTED`` ids, the least recently used dropped);
the rows are read once per group of CVDs whose reach adds up to ``PAIRS`` ids (the table
is keyed by blob, so each read is a scan of it: a fleet whose reaches add up to N ids
reads it N / ``PAIRS`` times). At most ``MAX_DROP`` rows go per gc; the next takes the
rest (the first gc after an upgrade may find every forgotten snapshot's rows).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, TypeGuard

from sqlalchemy import Engine, delete, select

from lamina.db.engine import read_tx
from lamina.db.models import cvd_blobs, cvds, shared_blobs, snapshots, tasks
from lamina.protocol.tasks import DELIVERED_TREES
from lamina.store.blob import BlobKind
from lamina.store.repository import Store
from lamina.store.roots import Walker

#: (CVD, id) pairs of reach held at once while rows are sorted out.
PAIRS = 4_000_000
#: Ids the tree listings kept between CVDs may name (least recently used dropped first).
LISTED = 4_000_000
#: Rows taken back by one gc at most (in its condemn's transaction).
MAX_DROP = 1_000_000
#: Ids per statement.
BATCH = 500

_SOURCE = "cvd:"  # ``fleet.cvd_source``: a CVD's snapshots' source name
#: The task parameters that name a tree delivered to the task's endpoint
#: (``DELIVERED_TREES``) or streamed to it (a migration onto a new base streams the
#: snapshot's ``stream_root``); ``db.roots`` keeps the trees of open tasks alive.
DELIVERY_PARAMS = (*sorted(set(DELIVERED_TREES.values())), "stream_root")
_EMPTY: tuple[list[bytes], list[bytes]] = ([], [])


def is_id(text: object) -> TypeGuard[str]:
    """Whether ``text`` is a blob id in hex (a task's parameter, read back from JSON)."""
    return (
        isinstance(text, str) and len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)
    )


class Ownership:
    """``gc.Owners`` for a server's database: the CVDs' ownership rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: each CVD's roots walked (snapshot roots and delivered trees)
        self.roots: dict[str, set[bytes]] = {}
        #: the rows that go: CVD -> blob ids
        self.doomed: dict[str, set[bytes]] = {}
        self._listing: OrderedDict[bytes, tuple[list[bytes], list[bytes]]] = OrderedDict()
        self._listed = 0  # ids the listings name
        self._dropped: int | None = None

    @property
    def count(self) -> int:
        if self._dropped is not None:
            return self._dropped
        return sum(len(v) for v in self.doomed.values())

    def plan(self, store: Store, walk: Walker) -> None:
        self.roots = self._owner_roots()
        group: dict[str, set[bytes]] = {}
        held = 0
        for cvd_id in sorted(self.roots):
            reach = self._reach(store, walk, self.roots[cvd_id])
            group[cvd_id] = reach
            held += len(reach) + 1
            if held >= PAIRS:
                self._sort_out(group)
                group, held = {}, 0
        if group:
            self._sort_out(group)

    def settled(self) -> bool:
        now = self._owner_roots()
        return all(trees <= self.roots.get(cvd_id, set()) for cvd_id, trees in now.items())

    def catch_up(self, store: Store, walk: Walker) -> None:
        if self._dropped is not None:  # (the condemn is done: nothing left to keep)
            return
        for cvd_id, trees in self._owner_roots().items():
            walked = self.roots.setdefault(cvd_id, set())
            new = trees - walked
            if not new:
                continue
            walked |= new
            doomed = self.doomed.get(cvd_id)
            if doomed:
                doomed -= self._reach(store, walk, new)

    def drop(self, conn: Any) -> None:
        """Delete the doomed rows, and the common marks of their blobs: a mark counted
        the owner that goes (``inflight``: content ``share_threshold`` CVDs held), and
        left, it would answer "present" to that owner where its own row no longer does.
        A mark is a shortcut: a blob without one has its owners counted at the next ask."""
        dropped = 0
        for cvd_id, ids in self.doomed.items():
            part = sorted(ids)
            for k in range(0, len(part), BATCH):
                r = conn.execute(
                    delete(cvd_blobs).where(
                        cvd_blobs.c.cvd_id == cvd_id, cvd_blobs.c.blob_id.in_(part[k : k + BATCH])
                    )
                )
                dropped += max(r.rowcount, 0)
        lost = sorted(set().union(*self.doomed.values())) if self.doomed else []
        for k in range(0, len(lost), BATCH):
            conn.execute(
                delete(shared_blobs).where(shared_blobs.c.blob_id.in_(lost[k : k + BATCH]))
            )
        self._dropped = dropped

    # --- the parts ---------------------------------------------------------------------

    def _owner_roots(self) -> dict[str, set[bytes]]:
        """Every CVD and the trees that are its own: its snapshots' roots, and the trees
        delivered or streamed to it by its tasks (``DELIVERY_PARAMS``: a restore's, a
        revert's or a migration's ``root``, a layer delivery's ``delta``, a migration's
        ``stream_root``), in any state: it read them or could have. A task is its
        ``cvd_id``'s (the CVD of its device when it was queued), else its device's CVD's."""
        params = [tasks.c.params[name].as_string().label(name) for name in DELIVERY_PARAMS]
        with read_tx(self.engine) as c:
            owners = c.execute(select(cvds.c.id, cvds.c.device_id)).all()
            snaps = c.execute(select(snapshots.c.source, snapshots.c.root)).all()
            delivered = c.execute(
                select(tasks.c.cvd_id, tasks.c.device_id, *params).where(
                    tasks.c.kind.in_(list(DELIVERED_TREES))
                )
            ).all()
        out: dict[str, set[bytes]] = {r.id: set() for r in owners}
        by_device = {r.device_id: r.id for r in owners if r.device_id}
        for s in snaps:
            if s.source.startswith(_SOURCE) and s.source[len(_SOURCE) :] in out:
                out[s.source[len(_SOURCE) :]].add(bytes(s.root))
        for t in delivered:
            cvd_id = t.cvd_id if t.cvd_id is not None else by_device.get(t.device_id)
            if cvd_id not in out:
                continue
            for name in DELIVERY_PARAMS:
                tree = getattr(t, name)
                if is_id(tree):
                    out[cvd_id].add(bytes.fromhex(tree))
        return out

    def _reach(self, store: Store, walk: Walker, trees: Iterable[bytes]) -> set[bytes]:
        """Every id under ``trees`` (the trees too). A tree the store does not hold
        reaches nothing more (a delivered layer version collected since)."""
        reach: set[bytes] = set()
        walked: set[bytes] = set()
        todo = list(trees)
        while todo:
            batch = [t for t in dict.fromkeys(todo[:256]) if t not in walked]
            todo = todo[256:]
            listings = self._lists(store, walk, batch)
            for t in batch:
                walked.add(t)
                reach.add(t)
                subtrees, chunks = listings[t]
                reach.update(chunks)
                todo.extend(s for s in subtrees if s not in walked)
        return reach

    def _lists(
        self, store: Store, walk: Walker, ids: list[bytes]
    ) -> dict[bytes, tuple[list[bytes], list[bytes]]]:
        """The listing of each tree of ``ids``: cached ones first, the rest read in one
        batch (coalesced ranges) and cached, the least recently used dropped past
        ``LISTED`` ids."""
        out: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
        need: list[bytes] = []
        for t in ids:
            hit = self._listing.get(t)
            if hit is None:
                need.append(t)
            else:
                self._listing.move_to_end(t)
                out[t] = hit
        if not need:
            return out
        cat = store.catalog
        held = set(cat.locate(need, include_condemned=True, kind=BlobKind.TREE))
        others = [t for t in need if t not in held]
        if others:  # held only under another kind: a tree all the same (``gc.mark``)
            held.update(cat.locate(others, include_condemned=True))
        present = [t for t in need if t in held]
        for t, data in zip(present, store.get_many(present), strict=True):
            out[t] = walk(data)
        for t in need:
            listing = out.setdefault(t, _EMPTY)
            self._listing[t] = listing
            self._listed += len(listing[0]) + len(listing[1]) + 1
        while self._listed > LISTED and self._listing:
            _, (subs, chunks) = self._listing.popitem(last=False)
            self._listed -= len(subs) + len(chunks) + 1
        return out

    def _sort_out(self, group: dict[str, set[bytes]]) -> None:
        """Read the rows of ``group``'s CVDs: those outside the CVD's reach go."""
        names = sorted(group)
        room = MAX_DROP - self.count
        with read_tx(self.engine) as c:
            for k in range(0, len(names), BATCH):
                q = select(cvd_blobs.c.cvd_id, cvd_blobs.c.blob_id).where(
                    cvd_blobs.c.cvd_id.in_(names[k : k + BATCH])
                )
                # streamed (a server-side cursor on PostgreSQL): a group's rows are not
                # held at once
                for cvd_id, bid in c.execution_options(yield_per=10_000).execute(q):
                    bid = bytes(bid)
                    if bid not in group[cvd_id]:
                        if room <= 0:
                            return  # (the next gc takes the rest)
                        self.doomed.setdefault(cvd_id, set()).add(bid)
                        room -= 1
