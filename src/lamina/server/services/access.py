"""What a device may learn about and read: the blobs its own CVD holds, nothing else.

A blob id is a keyed hash of the content, and every active agent holds the key
(it needs it to name chunks as the store does). So "is this id stored?" and "give
me this id" are content oracles: a device that guesses a small file of another
endpoint (a PIN, a password line) confirms it with one id. The server therefore
answers a device only about the blobs its CVD *proved* it holds:

- blobs it uploaded (``upload_bundle`` re-hashed their content against the id);
- blobs of its own snapshots (all of which it uploaded, or held before: on first
  use after the upgrade that added ``cvd_blobs``, a CVD's snapshots are walked once);
- blobs under a tree the server delivered to it: the ``root`` of a restore or
  revert task, the ``delta`` of a layer-apply task, while that task is open
  (once read, they are the CVD's: the endpoint holds them).

``cvd_blobs`` holds the first two (and the delivered blobs read), one row per (CVD, blob). The third is checked by
walking the task's tree, cached per root in this process. ``/agent/missing`` reports
as present only stored blobs this CVD owns: the agent uploads the others again and
the store keeps one copy (its writer deduplicates), so cross-endpoint dedup still
saves storage, at the cost of bandwidth. The exception is common content: blobs at
least ``share_threshold`` other CVDs hold or are uploading (``inflight``), which no
longer tells anyone anything about a single endpoint.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql

from lamina.db.engine import driver_rows, read_tx, write_tx
from lamina.db.models import cvd_blobs, cvds, tasks
from lamina.db.ownership import is_id
from lamina.errors import ForbiddenError, MissingDataError, UploadsPendingError
from lamina.protocol.tasks import DELIVERED_TREES, TaskKind, TaskState
from lamina.server.services import inflight
from lamina.server.services.fleet import cvd_source
from lamina.server.services.inflight import OFF, Sharing
from lamina.server.services.rows import Cvd
from lamina.store.blob import BlobKind
from lamina.store.repository import Store
from lamina.tree.backup import walk_blobs

#: Ids per SQL statement (well below SQLite's bound-parameter limit).
BATCH = 5000
#: A task in these states may still download its delivered tree (``DELIVERED_TREES``).
OPEN_TASK_STATES = (TaskState.QUEUED, TaskState.RUNNING)


def owned(c: Connection, cvd_id: str, ids: Iterable[bytes]) -> set[bytes]:
    """Which of ``ids`` this CVD owns: one statement per ``BATCH`` ids."""
    return {
        bytes(r[0])
        for r in inflight.rows_in(
            c,
            "SELECT blob_id FROM cvd_blobs WHERE blob_id IN (%s) AND cvd_id = ?",
            lambda part: select(cvd_blobs.c.blob_id).where(
                cvd_blobs.c.cvd_id == cvd_id, cvd_blobs.c.blob_id.in_(part)
            ),
            list(dict.fromkeys(ids)),
            cvd_id,
        )
    }


def sharing_of(engine: Engine, cvd_id: str, sharing: Sharing) -> Sharing:
    """The sharing a CVD's bundles get (``inflight.for_cvd``: none for a flex guest's)."""
    with read_tx(engine) as c:
        return inflight.for_cvd(c, cvd_id, sharing)


def owned_by(
    engine: Engine, cvd_id: str, sharing: Sharing
) -> Callable[[list[bytes]], set[bytes]] | None:
    """``owned`` for one CVD in its own read transaction, for a bundle's intake to store
    a held blob the CVD does not own as a surplus copy; None (store no such copy) when
    the CVD does not share (``sharing``, its own: ``sharing_of``): there every endpoint
    uploads what it lacks, and copies until the next gc would be one per endpoint, not at
    most ``threshold - 1`` (the timing of a bundle is then not evened out:
    docs/design.md)."""
    if not sharing.on:
        return None

    def ask(ids: list[bytes]) -> set[bytes]:
        with read_tx(engine) as c:
            return owned(c, cvd_id, ids)

    return ask


def record(
    engine: Engine,
    cvd_id: str,
    ids: Iterable[bytes],
    sharing: Sharing = OFF,
    first: frozenset[bytes] = frozenset(),
) -> int:
    """The CVD's device proved it holds these blobs (it uploaded them).

    Returns how many were new *to this CVD*: the answer a bundle upload gives. Whether
    the store already held a blob for another CVD must not show (that would be the
    content oracle again, through uploads of guesses). With ``sharing`` on (the CVD's
    own: ``sharing_of``), the CVD's claims on them end in the same transaction
    (``inflight.received``); ``first``, the
    ids its bundle stored first (``intake.Intake``), are not asked whether they became
    common."""
    want = list(dict.fromkeys(ids))
    with write_tx(engine) as c:
        if c.dialect.name == "sqlite":
            # The rows the insert added are the new ones: counted by the driver, not
            # asked first (a lookup of every id of the bundle). The claims end for
            # every id (one on an id the CVD owned already ends too: it was sent).
            new_count = _own(c, cvd_id, want)
            inflight.received(c, cvd_id, want, sharing, first)
            return new_count
        mine = owned(c, cvd_id, want)
        new = [i for i in want if i not in mine]
        _own(c, cvd_id, new)
        inflight.received(c, cvd_id, new, sharing, first)
    return len(new)


def _own(c: Connection, cvd_id: str, ids: list[bytes]) -> int:
    """Insert the CVD's ownership rows (ids it owns already are skipped); on SQLite,
    return how many rows were added (the driver's count of the executemany).

    In the ids' order (``sorted``): rows inserted in key order touch each page of the
    table's two indexes once, not once per row at random."""
    ids = sorted(ids)
    added = 0
    for k in range(0, len(ids), BATCH):
        added += inflight.write_rows(
            c,
            "INSERT INTO cvd_blobs (cvd_id, blob_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            lambda: postgresql.insert(cvd_blobs).on_conflict_do_nothing(),
            ("cvd_id", "blob_id"),
            [(cvd_id, i) for i in ids[k : k + BATCH]],
        )
    return added


def ensure_indexed(engine: Engine, store: Store, cvd: Cvd) -> None:
    """Fill ``cvd_blobs`` from the CVD's snapshots once (CVDs made before revision 0005)."""
    if cvd.blobs_indexed:
        return
    roots = [s.root for s in store.catalog.snapshots(cvd_source(cvd.id))]
    ids = list(walk_blobs(store, *roots))
    record(engine, cvd.id, ids)
    with write_tx(engine) as c:
        c.execute(update(cvds).where(cvds.c.id == cvd.id).values(blobs_indexed=True))


def missing(
    engine: Engine, store: Store, cvd: Cvd, ids: list[bytes], sharing: Sharing = OFF
) -> list[bytes]:
    """The ids this CVD must upload: not stored, or stored but not (yet) its own.

    With ``sharing`` on, minus common blobs and blobs enough other CVDs are uploading
    (``inflight.need``, which claims the rest for this CVD)."""
    ensure_indexed(engine, store, cvd)
    gone = store.catalog.missing(ids)
    # Ownership is asked only of stored ids: one not stored is sent, owned or not.
    stored_ids = [i for i in ids if i not in gone]
    mine: set[bytes] = set()
    if stored_ids or sharing.on:
        with read_tx(engine) as c:
            if stored_ids:
                mine = owned(c, cvd.id, stored_ids)
            sharing = inflight.for_cvd(c, cvd.id, sharing)  # (none for a flex guest)
    candidates = [i for i in ids if i in gone or i not in mine]
    if not sharing.on or not candidates:
        return candidates
    stored = {i for i in candidates if i not in gone}
    with write_tx(engine) as c:
        return inflight.need(c, cvd.id, candidates, stored, sharing)


class CommitOwnership:
    """A commit's ownership check, asked by the commit's one walk of the new trees
    (``sync.verify_tree``) a folder level at a time: refuse a snapshot naming a blob
    this CVD does not own.

    Without this, committing a tree that names a guessed chunk id and reading it back
    would be the oracle again. Subtrees equal to the previous snapshot's are owned
    already and are not walked. With ``sharing`` on, common blobs count as owned (and
    become the CVD's at ``done``), and blobs still in flight for others make the
    commit wait (``inflight.settle``).
    """

    def __init__(self, engine: Engine, store: Store, cvd: Cvd, sharing: Sharing = OFF) -> None:
        ensure_indexed(engine, store, cvd)
        with read_tx(engine) as c:
            sharing = inflight.for_cvd(c, cvd.id, sharing)
        self.engine, self.store, self.cvd_id, self.sharing = engine, store, cvd.id, sharing
        self.taken: list[bytes] = []
        #: the ids of the ``require`` answered "uploads pending" (``inflight.PendingCommits``)
        self.pending: list[bytes] = []
        #: what the CVD's bundles stored under the commit writer's gc epoch, by kind (id →
        #: raw length: owned, live as that kind; ``RecentUploads``), answered first
        self.recent: dict[BlobKind, dict[bytes, int]] = {}

    def root(self, root: bytes) -> None:
        """The root first, on its own (with sharing on, a root tree other CVDs hold in
        common is never "missing" to this one, so it is never uploaded: it is taken as
        any common tree is), so that its absence is named as such."""
        try:
            self.require([root])
        except MissingDataError:
            raise MissingDataError(
                "the snapshot's root tree is not stored for this CVD; upload it first"
            ) from None

    def require(self, ids: list[bytes]) -> None:
        if not ids:
            return
        with read_tx(self.engine) as c:
            try:
                self.taken += _require_owned(c, self.store, self.cvd_id, ids, self.sharing)
            except UploadsPendingError as e:
                # (the others of ``ids`` were owned, or common: that stays so)
                self.pending = list(e.promised or ids)
                raise

    def still_pending(self, ids: list[bytes]) -> bool:
        """Whether a commit naming ``ids`` (those a walk of it stopped at) would be answered
        "uploads pending" by them now: ``require``'s answer for them alone, kept nothing of
        (whatever else they would be, owned, common or missing, the walk decides)."""
        with read_tx(self.engine) as c:
            try:
                _require_owned(c, self.store, self.cvd_id, ids, self.sharing)
            except UploadsPendingError:
                return True
            except MissingDataError:
                return False
        return False

    def stored_as(self, ids: list[bytes], kind: BlobKind) -> dict[bytes, int]:
        """The raw length of each of ``ids`` this CVD owns and the store holds (live) as
        ``kind``: on SQLite one statement per ``BATCH`` ids joining the ownership rows to
        the catalog's (same database), where ``require`` and the catalog's ``locate`` took
        one each. Ids it does not answer must go the long way (``require``, then
        ``locate``: refused, or stored again as ``kind``). Ids in ``recent`` are answered
        from it, asking nothing. On other databases, or with a catalog on another
        database than the server's rows (never, by ``open_context``): only those."""
        out: dict[bytes, int] = {}
        known = self.recent.get(kind)
        if known:
            rest = []
            for bid in ids:
                raw = known.get(bid)
                if raw is None:
                    rest.append(bid)
                else:
                    out[bid] = raw
            ids = rest
        if not ids or getattr(self.store.catalog, "engine", None) is not self.engine:
            return out
        with read_tx(self.engine) as c:
            if c.dialect.name != "sqlite":
                return out
            for part in inflight.id_batches(ids):
                sql = _SQLITE_STORED_AS % ",".join("?" * len(part))
                for bid, raw in driver_rows(c, sql, (self.cvd_id, *part, int(kind))):
                    out[bytes(bid)] = raw
        return out

    def done(self) -> None:
        """Every blob the snapshot names passed: the common ones taken become the CVD's."""
        if self.taken:
            record(self.engine, self.cvd_id, self.taken, self.sharing)
            self.taken = []

    def landing(self, root: bytes) -> None:
        """The snapshot of ``root`` passed and is about to go in: every blob it names is
        the CVD's (recorded again when a gc took back rows while the commit checked
        them; recorded after the gc read the rows, they stay)."""
        record(self.engine, self.cvd_id, walk_blobs(self.store, root))

    def recording(self, ids: Iterable[bytes]) -> Iterator[bytes]:
        """``ids`` as they come, each ``BATCH`` of them recorded as the CVD's: a commit's
        rescue walk (a gc condemned while its snapshot row went in)."""
        batch: list[bytes] = []
        for bid in ids:
            batch.append(bid)
            yield bid
            if len(batch) >= BATCH:
                record(self.engine, self.cvd_id, batch)
                batch = []
        if batch:
            record(self.engine, self.cvd_id, batch)


#: ``CommitOwnership.stored_as``: binds the CVD, the ids, then the kind.
_SQLITE_STORED_AS = (
    "SELECT b.id, b.raw_length FROM blobs b JOIN cvd_blobs o ON o.cvd_id = ? AND o.blob_id = b.id "
    "WHERE b.id IN (%s) AND b.condemned = 0 AND b.kind = ?"
)


def _require_owned(
    c: Connection, store: Store, cvd_id: str, ids: list[bytes], sharing: Sharing
) -> list[bytes]:
    """Refuse ids the CVD does not own; return those it may take (common blobs)."""
    mine = owned(c, cvd_id, ids)
    foreign = [i for i in dict.fromkeys(ids) if i not in mine]
    if not foreign:
        return []
    gone = store.catalog.missing(foreign)
    stored = {i for i in foreign if i not in gone}
    # The same answer whether the blob is stored for another CVD or not at all.
    return inflight.settle(c, cvd_id, foreign, stored, sharing)


class TreeCache:
    """Blob ids under a few recently delivered trees, per server process (thread-safe)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._sets: OrderedDict[bytes, frozenset[bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def under(self, store: Store, root: bytes) -> frozenset[bytes]:
        with self._lock:
            hit = self._sets.get(root)
            if hit is not None:
                self._sets.move_to_end(root)
                return hit
        ids = frozenset(walk_blobs(store, root))
        with self._lock:
            self._sets[root] = ids
            while len(self._sets) > self.size:
                self._sets.popitem(last=False)
        return ids


def check_read(
    engine: Engine, store: Store, cache: TreeCache, device_id: str, cvd: Cvd, ids: list[bytes]
) -> None:
    """Refuse unless every id is owned by the CVD or under a tree delivered to this device."""
    ensure_indexed(engine, store, cvd)
    with read_tx(engine) as c:
        mine = owned(c, cvd.id, ids)
        rest = [i for i in dict.fromkeys(ids) if i not in mine]
        if not rest:
            return
        open_tasks = c.execute(
            select(tasks.c.kind, tasks.c.params).where(
                tasks.c.device_id == device_id,
                tasks.c.state.in_(OPEN_TASK_STATES),
                tasks.c.kind.in_(list(DELIVERED_TREES)),
            )
        ).all()
        roots = [
            bytes.fromhex(tree)
            for t in open_tasks
            if isinstance(t.params, dict)
            and is_id(tree := t.params.get(DELIVERED_TREES[TaskKind(t.kind)]))
        ]
    delivered: set[bytes] = set()
    for r in roots:
        delivered |= cache.under(store, r)
        if all(i in delivered for i in rest):
            # The device holds them now (a layer it applies): its next sync need not
            # upload them again.
            record(engine, cvd.id, rest)
            return
    first = next(i for i in rest if i not in delivered)
    raise ForbiddenError(
        f"blob {first.hex()[:16]} is not in this device's snapshots or in a tree delivered to it"
    )
