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
from collections.abc import Iterator

import msgpack
from sqlalchemy import Engine, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import cvds
from lamina.errors import (
    IntegrityError,
    MissingDataError,
    TooLargeError,
    UsageError,
)
from lamina.protocol.bundle import BundleBlob, decode_bundle
from lamina.protocol.schemas import CommitRequest, CommitResponse, SnapshotPublic
from lamina.server.security import Principal, RateLimiter
from lamina.server.services import access, fleet, flex, inflight, layers
from lamina.server.services.fleet import cvd_source
from lamina.store import blob, repack
from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.repository import Store
from lamina.store.retention import Retention, apply_retention
from lamina.store.writer import Writer
from lamina.tree.backup import walk_blobs
from lamina.tree.model import Entry, decode_tree

MAX_IDS = 20000
#: A directory listing an agent may upload (about 300,000 entries); bounds the memory
#: a request can make the server spend inflating it.
MAX_UPLOADED_TREE = 32 * 1024 * 1024
#: Content a bundle may declare in all, after duplicates are dropped: 4x the default
#: body limit, so a small bundle cannot make the server inflate without bound.
MAX_BUNDLE_RAW = 256 * 1024 * 1024
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
    return [i.hex() for i in access.missing(engine, store, cvd, ids, sharing)]


def upload_bundle(store: Store, body: bytes, max_raw: int = MAX_BUNDLE_RAW) -> int:
    """Verify and store a bundle; return how many blobs were new (``upload_blobs``)."""
    return upload_blobs(store, decode_bundle(body), max_raw)


def upload_blobs(
    store: Store,
    items: list[BundleBlob],
    max_raw: int = MAX_BUNDLE_RAW,
    trees: DecodedTrees | None = None,
) -> int:
    """Verify and store a decoded bundle (``decode_bundle``: decoded once, by the
    caller that also needs its ids); return how many blobs were new. The new trees,
    decoded here to be checked, are kept in ``trees`` for the commit (stored first).

    Cheap checks come first, so a bundle costs work only for what it adds: each
    (id, kind) is taken once however often the bundle repeats it, the declared sizes
    must add up to at most ``max_raw``, and blobs the store already holds *as that
    kind* are skipped unread. Only the rest are inflated and hashed, all of them
    before anything is written (one bad blob refuses the whole bundle).
    """
    keys = store.keys
    unique: dict[tuple[bytes, BlobKind], BundleBlob] = {}
    declared = 0
    for it in items:
        kind = blob.KINDS.get(it.kind)
        if kind is None:
            raise IntegrityError(f"bundle blob {it.id.hex()[:16]} has unknown kind {it.kind}")
        if kind == BlobKind.SNAPSHOT:
            raise IntegrityError("agents do not upload snapshot records; commit instead")
        limit = keys.chunking.max_size if kind == BlobKind.DATA else MAX_UPLOADED_TREE
        if it.raw_length > limit:
            raise IntegrityError(
                f"bundle blob {it.id.hex()[:16]} claims {it.raw_length} bytes, above the {limit} limit"
            )
        if (it.id, kind) in unique:
            continue
        unique[(it.id, kind)] = it
        declared += it.raw_length
        if declared > max_raw:
            raise TooLargeError(
                f"bundle declares more than {max_raw} bytes of content; send smaller bundles"
            )
    with store.writer() as w:
        fresh = {
            kind: w.need({bid for bid, k in unique if k == kind}, kind)
            for kind in (BlobKind.DATA, BlobKind.TREE)
        }
        sealed_items = []
        decoded: list[tuple[bytes, list[Entry]]] = []
        for (bid, kind), it in unique.items():
            if bid not in fresh[kind]:
                continue
            try:
                data = blob.decompress(it.flag, it.payload, it.raw_length)
            except IntegrityError as e:
                raise IntegrityError(f"bundle blob {bid.hex()[:16]}: {e.message}") from e
            if blob.blob_id(keys.chunking.id_key, data) != bid:
                raise IntegrityError(f"bundle blob {bid.hex()[:16]}: content does not match its id")
            if kind == BlobKind.TREE:
                # refuses unsafe names and malformed trees now, not at restore
                decoded.append((bid, decode_tree(data)))
            sealed_items.append(
                (kind, bid, blob.seal(keys.data_key, kind, bid, it.flag, it.payload), it.raw_length)
            )
        for kind, bid, sealed, raw in sealed_items:
            w.put_sealed(kind, bid, sealed, raw)
        w.flush()
        new = w.new_blobs
    if trees is not None:
        for bid, entries in decoded:
            trees.put(bid, entries)
    repack.roll_if_due(store)  # after the bundle is durable: small packs into full ones
    return new


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


def _old_subtrees(store: Store, old: bytes) -> dict[bytes, bytes]:
    """Name -> subtree id of the folders of a tree of the previous snapshot (stored and
    verified when it was committed, read back hash-checked: only its folders are needed,
    so its entries are not validated again); {} when it is no longer stored."""
    try:
        doc = msgpack.unpackb(store.get(old), raw=False, strict_map_key=False)
    except MissingDataError:
        return {}
    except (ValueError, TypeError, msgpack.UnpackException):
        return {}
    rows = doc.get("entries") if isinstance(doc, dict) else None
    out: dict[bytes, bytes] = {}
    for d in rows if isinstance(rows, list) else ():
        if isinstance(d, dict) and d.get("type") == "dir":
            name, sub = d.get("name"), d.get("subtree")
            if isinstance(name, bytes) and isinstance(sub, bytes) and len(sub) == blob.ID_SIZE:
                out[name] = sub
    return out


def verify_tree(
    store: Store,
    root: bytes,
    previous: bytes | None,
    heal: Writer | None = None,
    owner: access.CommitOwnership | None = None,
    trees: DecodedTrees | None = None,
) -> Iterator[bytes]:
    """Check every tree and chunk under ``root`` is stored; skip subtrees equal to ``previous``'s.

    One blob, one kind: the root and every ``subtree`` must be stored as TREE blobs and
    every chunk as DATA; one held only under the other kind is stored again under the
    right one by ``heal`` (the commit's writer). Every file's chunks and holes must add
    up to its size, and no size may pass ``MAX_FILE_SIZE``. With ``owner`` (a device's
    commit), every tree of a level is held to the CVD's ownership before it is read, and
    every chunk before it is looked up: one walk, each new tree decoded once (not at
    all when its bundle's decoding is still in ``trees``).

    Yields every blob id the snapshot references (for the gc rescue walk).
    """
    level: list[tuple[bytes, bytes | None]] = [(root, previous)]
    first = True
    while level:  # one level of folders at a time: one lookup for its trees, few for its chunks
        tree_ids = list(dict.fromkeys(t for t, _ in level))
        if owner is not None and not first:  # (the root: ``owner.root``, before)
            owner.require(tree_ids)
        first = False
        store.prefetch([t for t, _ in level] + [o for _, o in level if o is not None])
        _as_kind(store, tree_ids, BlobKind.TREE, heal)
        chunks: list[bytes] = []
        files: list[tuple[bytes, Entry]] = []
        below: list[tuple[bytes, bytes | None]] = []
        decoded: dict[bytes, list[Entry]] = {}
        for tid, old in level:
            entries = decoded.get(tid)
            if entries is None and trees is not None:
                entries = trees.take(tid)
            if entries is None:
                entries = decode_tree(store.get(tid))
            decoded[tid] = entries
            yield tid
            old_sub = _old_subtrees(store, old) if old is not None else {}
            for e in entries:
                if e.type == "file":
                    if e.size > MAX_FILE_SIZE:
                        raise IntegrityError(
                            f"tree {tid.hex()[:16]}: file {e.name!r} claims {e.size} bytes, "
                            f"above the {MAX_FILE_SIZE} limit"
                        )
                    files.append((tid, e))
                chunks.extend(e.chunk_ids())
                if e.subtree is not None and old_sub.get(e.name) != e.subtree:
                    # (equal subtrees were verified with an earlier snapshot of this CVD,
                    # which keeps them alive)
                    below.append((e.subtree, old_sub.get(e.name)))
        del decoded
        sizes: dict[bytes, int] = {}
        unique = list(dict.fromkeys(chunks))
        for k in range(0, len(unique), 5000):
            part = unique[k : k + 5000]
            if owner is not None:
                owner.require(part)
            sizes.update(_as_kind(store, part, BlobKind.DATA, heal))
        for tid, e in files:
            total = sum(sizes[c] if isinstance(c, bytes) else c for c in e.content or ())
            if total != e.size:
                raise IntegrityError(
                    f"tree {tid.hex()[:16]}: file {e.name!r} has {total} bytes of content "
                    f"(chunks and holes), but its size says {e.size}"
                )
        yield from chunks
        level = below


def commit_snapshot(
    engine: Engine,
    store: Store,
    device: Principal,
    req: CommitRequest,
    sharing: inflight.Sharing = inflight.OFF,
    trees: DecodedTrees | None = None,
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
    """
    with read_tx(engine) as c:
        cvd = fleet.cvd_of_device(c, device.id)
        policy = fleet.policy_of(c, cvd)
    owner = access.CommitOwnership(engine, store, cvd, sharing)
    retention = Retention(
        policy.keep_last,
        policy.keep_hourly,
        policy.keep_daily,
        policy.keep_weekly,
        policy.keep_monthly,
    )
    record, kept, forgotten = _store_snapshot(
        store, cvd.id, device.id, req, retention, owner, trees
    )
    with write_tx(engine) as c:
        c.execute(
            update(cvds).where(cvds.c.id == cvd.id).values(last_sync=record.time, progress={})
        )
        finishing = layers.note_commit(c, store, cvd.id, record)
        inflight.committed(c, cvd.id)
    layers.finish_recording(engine, store, finishing)
    flex.assign_guest_layers(engine, store, cvd.id)  # a managed flex guest's layers
    return CommitResponse(snapshot=snapshot_public(record), kept=kept, forgotten=forgotten)


def _store_snapshot(
    store: Store,
    cvd_id: str,
    device_id: str,
    req: CommitRequest,
    retention: Retention,
    owner: access.CommitOwnership,
    trees: DecodedTrees | None,
) -> tuple[SnapshotRecord, int, int]:
    """Verify the snapshot's trees and chunks (held to the CVD's ownership by ``owner``,
    in the same walk), store its record, forget what retention drops."""
    source = cvd_source(cvd_id)
    root = bytes.fromhex(req.root)
    prev = store.catalog.snapshots(source)
    previous_root = prev[-1].root if prev else None
    owner.root(root)
    with store.writer() as w:
        # Verified under the writer's epoch: a gc that condemns after this makes the
        # commit rescue (or refuse) before the row goes in.
        if not store.catalog.locate([root]):
            raise MissingDataError("the snapshot's root tree is not stored; upload it first")
        for _ in verify_tree(store, root, previous_root, heal=w, owner=owner, trees=trees):
            pass
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
        record = w.commit_snapshot(record, lambda r: walk_blobs(store, r))
    repack.roll_if_due(store)
    keep, forget = apply_retention(store.catalog.snapshots(source), retention)
    if forget:
        store.forget([s.id for s in forget])
    return record, len(keep), len(forget)


def snapshot_public(s: SnapshotRecord) -> SnapshotPublic:
    return SnapshotPublic(
        id=s.id, time=s.time, files=s.files, bytes=s.bytes, root=s.root.hex(), meta=s.meta
    )
