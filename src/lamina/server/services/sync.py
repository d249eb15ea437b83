"""The server's side of a sync: what is missing, bundles in, verified commits out.

Nothing an agent sends is trusted: every blob is decompressed within its
declared size and re-hashed against its id; trees must decode (no unsafe names);
a commit is refused unless every tree and chunk the snapshot names is stored.
Each bundle is durable and indexed before its request returns, so an
interrupted sync resumes without sending it again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from sqlalchemy import Engine, update

from lamina.db.engine import write_tx
from lamina.db.models import cvds
from lamina.errors import ConflictError, IntegrityError, MissingDataError, UsageError
from lamina.protocol.bundle import decode_bundle
from lamina.protocol.schemas import CommitRequest, CommitResponse, SnapshotPublic
from lamina.server.services.fleet import ACTIVE, cvd_source
from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.repository import Store
from lamina.store.retention import Retention, apply_retention
from lamina.tree.model import decode_tree

MAX_IDS = 20000
#: A directory listing an agent may upload (about 300,000 entries); bounds the memory
#: a request can make the server spend inflating it.
MAX_UPLOADED_TREE = 32 * 1024 * 1024


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


def missing(store: Store, hex_ids: list[str]) -> list[str]:
    ids = parse_ids(hex_ids)
    gone = store.catalog.missing(ids)
    return [i.hex() for i in ids if i in gone]


def upload_bundle(store: Store, body: bytes) -> int:
    """Verify and store a bundle; return how many blobs were new."""
    items = decode_bundle(body)
    keys = store.keys
    sealed_items = []
    for it in items:
        try:
            kind = BlobKind(it.kind)
        except ValueError as e:
            raise IntegrityError(
                f"bundle blob {it.id.hex()[:16]} has unknown kind {it.kind}"
            ) from e
        if kind == BlobKind.SNAPSHOT:
            raise IntegrityError("agents do not upload snapshot records; commit instead")
        limit = keys.chunking.max_size if kind == BlobKind.DATA else MAX_UPLOADED_TREE
        if it.raw_length > limit:
            raise IntegrityError(
                f"bundle blob {it.id.hex()[:16]} claims {it.raw_length} bytes, above the {limit} limit"
            )
        try:
            data = blob.decompress(it.flag, it.payload, it.raw_length)
        except IntegrityError as e:
            raise IntegrityError(f"bundle blob {it.id.hex()[:16]}: {e.message}") from e
        if blob.blob_id(keys.chunking.id_key, data) != it.id:
            raise IntegrityError(f"bundle blob {it.id.hex()[:16]}: content does not match its id")
        if kind == BlobKind.TREE:
            decode_tree(data)  # refuses unsafe names and malformed trees now, not at restore
        sealed_items.append(
            (kind, it.id, blob.seal(keys.data_key, kind, it.id, it.flag, it.payload), it.raw_length)
        )
    with store.writer() as w:
        fresh = w.need({i[1] for i in sealed_items})
        for kind, bid, sealed, raw in sealed_items:
            if bid in fresh:
                w.put_sealed(kind, bid, sealed, raw)
        return w.new_blobs


def verify_tree(store: Store, root: bytes, previous: bytes | None) -> Iterator[bytes]:
    """Check every tree and chunk under ``root`` is stored; skip subtrees equal to ``previous``'s.

    Yields every blob id the snapshot references (for the gc rescue walk).
    """
    level: list[tuple[bytes, bytes | None]] = [(root, previous)]
    while level:  # one level of folders at a time: one lookup for its trees, few for its chunks
        store.prefetch([t for t, _ in level] + [o for _, o in level if o is not None])
        chunks: list[bytes] = []
        below: list[tuple[bytes, bytes | None]] = []
        for tid, old in level:
            entries = decode_tree(store.get(tid))
            yield tid
            old_sub: dict[bytes, bytes] = {}
            if old is not None:
                try:
                    old_sub = {e.name: e.subtree for e in decode_tree(store.get(old)) if e.subtree}
                except MissingDataError:
                    old_sub = {}
            for e in entries:
                chunks.extend(e.chunk_ids())
                if e.subtree is not None and old_sub.get(e.name) != e.subtree:
                    # (equal subtrees were verified with an earlier snapshot of this CVD,
                    # which keeps them alive)
                    below.append((e.subtree, old_sub.get(e.name)))
        for k in range(0, len(chunks), 5000):
            gone = store.catalog.missing(chunks[k : k + 5000])
            if gone:
                raise MissingDataError(
                    f"the snapshot names {len(gone)} chunks the server does not hold "
                    f"(first {next(iter(gone)).hex()[:16]}); upload them before committing"
                )
        yield from chunks
        level = below


def commit(
    engine: Engine, store: Store, cvd_row: object, req: CommitRequest, retention: Retention
) -> CommitResponse:
    cvd = cvd_row
    if getattr(cvd, "state") != ACTIVE:  # noqa: B009
        raise ConflictError("the CVD is archived: it takes no new snapshots")
    cvd_id = getattr(cvd, "id")  # noqa: B009
    source = cvd_source(cvd_id)
    root = bytes.fromhex(req.root)
    prev = store.catalog.snapshots(source)
    previous_root = prev[-1].root if prev else None
    with store.writer() as w:
        # Verified under the writer's epoch: a gc that condemns after this makes the
        # commit rescue (or refuse) before the row goes in.
        if not store.catalog.locate([root]):
            raise MissingDataError("the snapshot's root tree is not stored; upload it first")
        for _ in verify_tree(store, root, previous_root):
            pass
        record = SnapshotRecord(
            id="",
            time=dt.datetime.now(dt.UTC),
            source=source,
            root=root,
            files=req.files,
            bytes=req.bytes,
            meta={"cvd": cvd_id, "stats": req.stats},
        )
        record = w.commit_snapshot(record, lambda r: verify_tree(store, r, None))
    keep, forget = apply_retention(store.catalog.snapshots(source), retention)
    if forget:
        store.forget([s.id for s in forget])
    with write_tx(engine) as c:
        c.execute(
            update(cvds).where(cvds.c.id == cvd_id).values(last_sync=record.time, progress={})
        )
    return CommitResponse(snapshot=snapshot_public(record), kept=len(keep), forgotten=len(forget))


def snapshot_public(s: SnapshotRecord) -> SnapshotPublic:
    return SnapshotPublic(
        id=s.id, time=s.time, files=s.files, bytes=s.bytes, root=s.root.hex(), meta=s.meta
    )
