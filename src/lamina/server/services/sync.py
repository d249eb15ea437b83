"""The server's side of a sync: what is missing, bundles in, verified commits out.

Nothing an agent sends is trusted: every blob is decompressed within its
declared size and re-hashed against its id; trees must decode (no unsafe names);
a commit is refused unless every tree and chunk the snapshot names is stored.
Each bundle is durable and indexed before its request returns, so an
interrupted sync resumes without sending it again; the small packs this writes
are rolled into full ones once they add up to a pack size (``store.repack``).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import msgpack
from sqlalchemy import Engine, update

from lamina.db.engine import is_sqlite, read_tx, truncate_log, write_tx
from lamina.db.models import cvds
from lamina.errors import (
    IntegrityError,
    MissingDataError,
    UploadsPendingError,
    UsageError,
)
from lamina.protocol.schemas import CommitRequest, CommitResponse, SnapshotPublic
from lamina.server.security import Principal, RateLimiter
from lamina.server.services import access, fleet, flex, inflight, layers
from lamina.server.services.fleet import cvd_source
from lamina.server.services.recent_uploads import RecentUploads
from lamina.store import blob, repack
from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.repository import Store
from lamina.store.retention import Retention, apply_retention
from lamina.store.writer import Writer
from lamina.tree.backup import walk_blobs
from lamina.tree.model import Entry, decode_tree

MAX_IDS = 20000
#: A file entry larger than this is refused at commit (far above any real file
#: system's file; a huge "hole" must not pass as a file).
MAX_FILE_SIZE = 2**50


#: Entries of uploaded trees a server keeps decoded for the commits that name them.
DECODED_ENTRIES = 100_000


class DecodedTrees:
    """Trees decoded when their bundle came in, kept for the commit that walks them, so
    each uploaded tree is decoded once (thread-safe).

    Bounded: at most ``limit`` entries in all, the oldest tree out first. A commit
    takes each tree it walks out (``take``); one not here (evicted, or uploaded before
    a restart) is read from the store and decoded as before. Safe to share between
    devices: a tree's id is the keyed hash of its bytes, checked before it is decoded.
    """

    def __init__(self, limit: int = DECODED_ENTRIES) -> None:
        self.limit = limit
        self._trees: OrderedDict[bytes, list[Entry]] = OrderedDict()
        self._entries = 0
        self._lock = threading.Lock()

    def put(self, tid: bytes, entries: list[Entry]) -> None:
        if len(entries) > self.limit:
            return
        with self._lock:
            old = self._trees.pop(tid, None)
            self._entries += len(entries) - (len(old) if old is not None else 0)
            self._trees[tid] = entries
            while self._entries > self.limit:
                _, out = self._trees.popitem(last=False)
                self._entries -= len(out)

    def take(self, tid: bytes) -> list[Entry] | None:
        with self._lock:
            entries = self._trees.pop(tid, None)
            if entries is not None:
                self._entries -= len(entries)
            return entries

    def __len__(self) -> int:
        return len(self._trees)


def parse_ids(hex_ids: list[str]) -> list[bytes]:
    if len(hex_ids) > MAX_IDS:
        raise UsageError(f"at most {MAX_IDS} ids per request")
    out = []
    for h in hex_ids:
        if len(h) != 64:
            raise UsageError(f"blob id {h[:70]!r} is not 64 hex digits")
        try:
            out.append(bytes.fromhex(h))
        except ValueError as e:
            raise UsageError(f"blob id {h!r} is not hex") from e
    return out


def device_missing(
    engine: Engine,
    store: Store,
    device: Principal,
    hex_ids: list[str],
    limiter: RateLimiter,
    sharing: inflight.Sharing = inflight.OFF,
) -> list[str]:
    """``/agent/missing``: which of ``hex_ids`` the device's CVD must upload
    (``access.missing``), counted against the device's ``limiter``."""
    cvd = fleet.active_cvd_of_device(engine, device)
    ids = parse_ids(hex_ids)
    limiter.take(device.id, len(ids))
    ids = list(dict.fromkeys(ids))  # each once: a repeated guess adds up a lookup's time
    return [i.hex() for i in access.missing(engine, store, cvd, ids, sharing)]


def _as_kind(
    store: Store, ids: list[bytes], kind: BlobKind, heal: Writer | None
) -> dict[bytes, int]:
    """Raw length of each of ``ids`` stored as ``kind``.

    An id stored only under the other kind (a device uploaded a tree's bytes as data,
    or before one blob, one kind) is read, its content checked against its id, and
    stored again as ``kind`` by ``heal``; an id not stored at all is missing data.
    """
    what = "tree" if kind == BlobKind.TREE else "chunk"
    out = {bid: loc.raw_length for bid, loc in store.catalog.locate(ids, kind=kind).items()}
    lacking = [i for i in ids if i not in out]
    if not lacking:
        return out
    elsewhere = store.catalog.locate(lacking)
    gone = [i for i in lacking if i not in elsewhere]
    if gone:
        raise MissingDataError(
            f"the snapshot names {len(gone)} {what}s the server does not hold "
            f"(first {gone[0].hex()[:16]}); upload them before committing"
        )
    for bid in lacking:
        data = store.get(bid)
        if heal is not None:
            if kind == BlobKind.TREE:
                decode_tree(data)
            heal.put_chunk(kind, bid, data)
        out[bid] = len(data)
    return out


def _owned_as_kind(
    store: Store,
    ids: list[bytes],
    kind: BlobKind,
    heal: Writer | None,
    owner: access.CommitOwnership | None,
) -> dict[bytes, int]:
    """Raw length of each of ``ids``, held to ``owner``'s CVD (when given) and stored as
    ``kind`` (``_as_kind``). The ids the CVD owns and the store holds as ``kind``, most
    of a commit's, are answered by one lookup (``CommitOwnership.stored_as``); the rest
    go through ``owner.require`` and ``_as_kind``, refused or healed as before."""
    if not ids:
        return {}
    sizes = owner.stored_as(ids, kind) if owner is not None else {}
    rest = [i for i in ids if i not in sizes] if sizes else ids
    if rest:
        if owner is not None:
            owner.require(rest)
        sizes.update(_as_kind(store, rest, kind, heal))
    return sizes


#: The commit walk's bounds (``verify_tree``): trees looked up (and held to the CVD's
#: ownership) per query, chunk ids held before they are looked up and their files'
#: sizes checked, and ids of trees already walked kept to skip a repeated folder.
WALK_TREES = 256
WALK_CHUNKS = 5000
WALK_SEEN = 100_000


class _OldTree:
    """What a commit walk needs of a tree of the previous snapshot (stored and verified
    when it was committed, read back hash-checked, its entries not validated again): the
    subtree id of each folder, and each file's size and content.

    A new entry equal to the old one of its name needs no check (its chunks were found
    owned, stored as data and adding up to its size at that commit, and that snapshot
    keeps them alive); nor does a folder whose tree the old one names under any name (a
    rename)."""

    def __init__(self, store: Store, old: bytes | None) -> None:
        self.entries: dict[bytes, dict[str, object]] = {}
        self._subtrees: set[bytes | None] | None = None
        try:
            doc = msgpack.unpackb(store.get(old), raw=False, strict_map_key=False) if old else {}
            rows = doc.get("entries") if isinstance(doc, dict) else None
            if isinstance(rows, list):  # (its entries as msgpack gives them: by name)
                self.entries = {d["name"]: d for d in rows if isinstance(d, dict) and "name" in d}
        except (MissingDataError, ValueError, TypeError, KeyError, msgpack.UnpackException):
            self.entries = {}  # no longer stored (or unreadable): every entry is checked

    def holds_file(self, e: Entry) -> bool:
        d = self.entries.get(e.name)
        return (
            d is not None
            and d.get("type") == "file"
            and d.get("size", 0) == e.size
            and d.get("content", []) == e.content
        )

    def holds_folder(self, e: Entry) -> bool:
        """Only a folder's ``subtree`` counts: another entry may carry the key, unread
        (and unchecked) when its tree was decoded."""
        if e.subtree is not None and e.subtree == self.folder(e.name):
            return True
        if self._subtrees is None:  # a rename: the same tree under another name
            self._subtrees = {self.folder(name) for name in self.entries}
        return e.subtree in self._subtrees

    def folder(self, name: bytes) -> bytes | None:
        """The subtree id of the old folder of ``name``, or None."""
        d = self.entries.get(name)
        sub = d.get("subtree") if d is not None and d.get("type") == "dir" else None
        return sub if isinstance(sub, bytes) and len(sub) == blob.ID_SIZE else None


class _Content:
    """Files of a commit walk waiting for their chunks' lookup: at most ``WALK_CHUNKS``
    chunk ids (and one file's beyond) are held before ``check`` looks them up."""

    def __init__(
        self, store: Store, heal: Writer | None, owner: access.CommitOwnership | None
    ) -> None:
        self.store, self.heal, self.owner = store, heal, owner
        self.chunks: list[bytes] = []
        self.files: list[tuple[bytes, Entry]] = []

    def add(self, tid: bytes, e: Entry) -> bool:
        """Take a file of tree ``tid``; True once the chunks held reach the bound."""
        if e.size > MAX_FILE_SIZE:
            raise IntegrityError(
                f"tree {tid.hex()[:16]}: file {e.name!r} claims {e.size} bytes, "
                f"above the {MAX_FILE_SIZE} limit"
            )
        content = e.content
        if content:
            self.chunks += [c for c in content if isinstance(c, bytes)]
            self.files.append((tid, e))
        elif e.size:  # (an empty file adds up to its size of 0)
            _add_up(tid, e, {})
        return len(self.chunks) >= WALK_CHUNKS

    def check(self) -> list[bytes]:
        """Hold the chunks to the CVD's ownership, find each stored as data (healed by
        ``heal``), check each file's chunks and holes add up to its size; return the
        chunk ids checked and hold none."""
        unique = list(dict.fromkeys(self.chunks))
        sizes = _owned_as_kind(self.store, unique, BlobKind.DATA, self.heal, self.owner)
        for tid, e in self.files:
            _add_up(tid, e, sizes)
        checked, self.chunks, self.files = self.chunks, [], []
        return checked


def _add_up(tid: bytes, e: Entry, sizes: dict[bytes, int]) -> None:
    content = e.content or ()
    if len(content) == 1 and type(content[0]) is bytes:  # (most files: one chunk)
        total = sizes[content[0]]
    else:
        total = sum(sizes[c] if isinstance(c, bytes) else c for c in content)
    if total != e.size:
        raise IntegrityError(
            f"tree {tid.hex()[:16]}: file {e.name!r} has {total} bytes of content "
            f"(chunks and holes), but its size says {e.size}"
        )


def verify_tree(
    store: Store,
    root: bytes,
    previous: bytes | None,
    heal: Writer | None = None,
    owner: access.CommitOwnership | None = None,
    trees: DecodedTrees | None = None,
) -> Iterator[bytes]:
    """Check every tree and chunk under ``root`` is stored; skip what ``previous`` holds.

    One blob, one kind: the root and every ``subtree`` must be stored as TREE blobs and
    every chunk as DATA; one held only under the other kind is stored again under the
    right one by ``heal`` (the commit's writer). Every file's chunks and holes must add
    up to its size, and no size may pass ``MAX_FILE_SIZE``. With ``owner`` (a device's
    commit), trees are held to the CVD's ownership before they are read, and chunks
    before they are looked up: one walk, each new tree decoded once (not at all when
    its bundle's decoding is still in ``trees``).

    Incremental: a folder whose tree the previous snapshot's folder of the same path
    names, and a file equal to its entry there, were verified at that commit and are
    not checked again (``_OldTree``); a tree met twice in one walk is walked once.

    Bounded memory, whatever the snapshot's width: depth first, ``WALK_TREES`` trees
    looked up per query and one tree's entries decoded at a time, at most
    ``WALK_CHUNKS`` chunk ids waiting for their lookup (``_Content``); what grows is
    the ids of the folders still to walk on the current path, 64 bytes each.

    Yields the id of every tree and chunk it checked.
    """
    pending: list[tuple[bytes, bytes | None]] = [(root, previous)]
    content = _Content(store, heal, owner)
    seen: set[bytes] = set()
    first = True
    while pending:  # depth first: the folders still to walk are those on the current path
        batch = pending[-WALK_TREES:]
        del pending[-WALK_TREES:]
        tree_ids = [t for t in dict.fromkeys(t for t, _ in batch) if t not in seen]
        # (the root's ownership: ``owner.root``, before)
        _owned_as_kind(store, tree_ids, BlobKind.TREE, heal, None if first else owner)
        first = False
        store.prefetch(tree_ids + [o for _, o in batch if o is not None])
        for tid, old in batch:
            if tid in seen:
                continue
            if len(seen) >= WALK_SEEN:
                seen.clear()
            seen.add(tid)
            entries = trees.take(tid) if trees is not None else None
            if entries is None:
                entries = decode_tree(store.get(tid))
            yield tid
            was = _OldTree(store, old)
            for e in entries:
                if e.type == "file" and not was.holds_file(e) and content.add(tid, e):
                    yield from content.check()
                elif e.subtree is not None and not was.holds_folder(e):
                    pending.append((e.subtree, was.folder(e.name)))
            del entries
    yield from content.check()


def commit_snapshot(
    engine: Engine,
    store: Store,
    device: Principal,
    req: CommitRequest,
    sharing: inflight.Sharing = inflight.OFF,
    trees: DecodedTrees | None = None,
    pending: inflight.PendingCommits | None = None,
    recent: RecentUploads | None = None,
) -> CommitResponse:
    """The agent's commit: verify, store the snapshot, apply retention, update the rows.

    Not one database transaction, because the store's write order comes first: the
    snapshot record is written (packs, then index rows, then the record) only once
    every blob it names is verified; retention then forgets under its own markers;
    and only then do the server's rows change, in one transaction: the CVD's last
    sync, the layers the endpoint reports running and a recording's progress. A
    crash between the steps leaves a stored snapshot whose rows catch up at the
    next commit, never rows naming a snapshot that is not stored. A recording that
    ends with this snapshot has its app layer captured last (blobs, then rows).

    A commit answered "uploads pending" is remembered in ``pending``: asked again, it
    settles the ids its walk stopped at before walking again (``_still_pending``).
    What the CVD's bundles stored since its last commit (``recent``, under the same gc
    epoch) is answered without asking the database, and forgotten once it committed.
    """
    with read_tx(engine) as c:
        cvd = fleet.cvd_of_device(c, device.id)
        policy = fleet.policy_of(c, cvd)
        pinned = layers.pinned_snapshots(c, cvd.id)
    owner = access.CommitOwnership(engine, store, cvd, sharing)
    retention = Retention(
        policy.keep_last,
        policy.keep_hourly,
        policy.keep_daily,
        policy.keep_weekly,
        policy.keep_monthly,
    )
    record, kept, forgotten = _store_snapshot(
        store, cvd.id, device.id, req, retention, owner, trees, pending, recent, pinned
    )
    with write_tx(engine) as c:
        c.execute(
            update(cvds).where(cvds.c.id == cvd.id).values(last_sync=record.time, progress={})
        )
        finishing = layers.note_commit(c, store, cvd.id, record)
        inflight.committed(c, cvd.id)
        quiet = is_sqlite(engine) and not inflight.others_uploading(c, cvd.id)
    layers.finish_recording(engine, store, finishing)
    flex.assign_guest_layers(engine, store, cvd.id)  # a managed flex guest's layers
    if quiet:  # the last sync in flight ended: SQLite's log need not stay ~40 MB on disk
        truncate_log(engine)
    return CommitResponse(snapshot=snapshot_public(record), kept=kept, forgotten=forgotten)


def _store_snapshot(
    store: Store,
    cvd_id: str,
    device_id: str,
    req: CommitRequest,
    retention: Retention,
    owner: access.CommitOwnership,
    trees: DecodedTrees | None,
    pending: inflight.PendingCommits | None = None,
    recent: RecentUploads | None = None,
    pinned: frozenset[str] = frozenset(),
) -> tuple[SnapshotRecord, int, int]:
    """Verify the snapshot's trees and chunks (held to the CVD's ownership by ``owner``,
    in the same walk), store its record, forget what retention drops but ``pinned``
    (a recording's start: its app layer is the difference from it)."""
    source = cvd_source(cvd_id)
    root = bytes.fromhex(req.root)
    # First, before the previous snapshot is read and any blob's ownership asked: a gc
    # that condemns after this may take back the rows the check relies on (``landing``).
    checked_under = store.catalog.gc_epoch()
    prev = store.catalog.snapshots(source)
    previous_root = prev[-1].root if prev else None
    owner.root(root)
    if pending is not None:
        _still_pending(cvd_id, root, owner, pending, checked_under)

    def remember(ids: list[bytes]) -> None:
        if pending is not None:
            pending.remember(cvd_id, root, ids, checked_under)

    with store.writer() as w:
        # Verified under the writer's epoch: a gc that condemns after this makes the
        # commit rescue (or refuse) before the row goes in.
        if not store.catalog.locate([root]):
            raise MissingDataError("the snapshot's root tree is not stored; upload it first")
        if recent is not None:  # (a collection after this is the writer's to notice)
            owner.recent = recent.of(cvd_id, w.epoch)
        _walk(store, root, previous_root, w, owner, trees, remember)
        owner.done()  # the common blobs it names are the CVD's before its snapshot is
        record = SnapshotRecord(
            id="",
            time=dt.datetime.now(dt.UTC),
            source=source,
            root=root,
            files=req.files,
            bytes=req.bytes,
            # the device: the machine the system ran on (drivers.last_device_facts)
            meta={"cvd": cvd_id, "device": device_id, "stats": req.stats},
        )
        if w.epoch != checked_under:
            # A gc condemned while the commit checked: it took back the rows of blobs
            # no snapshot of this CVD named yet (``db.ownership``), this one's among
            # them. They were proven: they are the CVD's again, before its row goes in
            # (so a stop between the two leaves no snapshot of the CVD's it does not own).
            owner.landing(root)
        # (and again should a gc condemn while the row goes in: its rescue walk records)
        record = w.commit_snapshot(record, lambda r: owner.recording(walk_blobs(store, r)))
    if recent is not None:
        recent.forget(cvd_id)
    repack.roll_if_due(store)
    keep, forget = apply_retention(store.catalog.snapshots(source), retention)
    forget = [s for s in forget if s.id not in pinned]
    if forget:
        store.forget([s.id for s in forget])
    return record, len(keep), len(forget)


def _still_pending(
    cvd_id: str,
    root: bytes,
    owner: access.CommitOwnership,
    pending: inflight.PendingCommits,
    epoch: int,
) -> None:
    """Answer "uploads pending" at once, before any walk, when the ids the last walk of
    this commit stopped at (remembered in ``pending`` under the gc ``epoch`` the commit
    began in) are still promised; else forget them (the walk decides)."""
    waiting = pending.recall(cvd_id, root, epoch)
    if waiting is not None:
        if owner.still_pending(waiting):
            raise UploadsPendingError(
                "the snapshot names chunks or trees other endpoints are still uploading; "
                "commit again in a moment"
            )
        pending.forget(cvd_id, root)


def _walk(
    store: Store,
    root: bytes,
    previous: bytes | None,
    heal: Writer,
    owner: access.CommitOwnership,
    trees: DecodedTrees | None,
    remember: Callable[[list[bytes]], None],
) -> None:
    """The commit walk (``verify_tree``); one answered "uploads pending" calls
    ``remember`` with the ids it stopped at."""
    try:
        for _ in verify_tree(store, root, previous, heal=heal, owner=owner, trees=trees):
            pass
    except UploadsPendingError:
        remember(owner.pending)
        raise


def snapshot_public(s: SnapshotRecord) -> SnapshotPublic:
    return SnapshotPublic(
        id=s.id, time=s.time, files=s.files, bytes=s.bytes, root=s.root.hex(), meta=s.meta
    )
