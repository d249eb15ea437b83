"""Operations on a CVD: ask for a sync, restore, revert; browse its snapshots; read its files.

Reading file contents (a download, a restore as download, blobs read by a user)
needs ``data.read`` -- ``read`` shows names and metadata only -- and each read
is written to the audit log with the CVD, the snapshot, the path and the user.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy import Engine, select

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import policies
from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.protocol.schemas import (
    BrowseEntry,
    DownloadPublic,
    PolicySettings,
    RestoreRequest,
    RevertRequest,
    SnapshotPublic,
    TaskPublic,
)
from lamina.protocol.tasks import (
    RestoreParams,
    RevertParams,
    SyncParams,
    TaskKind,
    TaskParams,
)
from lamina.server.security import Principal
from lamina.server.services import fleet, tasks
from lamina.server.services.common import audit
from lamina.server.services.sync import snapshot_public
from lamina.store.catalog import SnapshotRecord
from lamina.store.repository import Store
from lamina.tree.model import Entry, decode_tree
from lamina.tree.names import split_path
from lamina.tree.paths import lookup

#: The permission to read file contents (not only names and metadata).
DATA_READ = "data.read"


def _device_task(
    engine: Engine, actor: Principal, ref: str, kind: TaskKind, params: TaskParams
) -> TaskPublic:
    actor.require("cvd.operate")
    with write_tx(engine) as c:
        cvd = fleet.find_cvd(c, ref)
        if cvd.state != fleet.ACTIVE or not cvd.device_id:
            raise ConflictError(f"CVD {cvd.name} is {cvd.state}: it has no device to act on")
        tid = tasks.enqueue(
            c, kind, actor.name, cvd_id=cvd.id, device_id=cvd.device_id, params=params
        )
        audit(c, actor.name, f"cvd.{kind}", cvd.id, task=tid, **params.model_dump(mode="json"))
    return tasks.get(engine, actor, tid)


def request_sync(engine: Engine, actor: Principal, ref: str) -> TaskPublic:
    return _device_task(engine, actor, ref, TaskKind.SYNC, SyncParams())


def snapshot_of(store: Store, cvd_id: str, ref: str) -> SnapshotRecord:
    """The one snapshot reference resolver: ``latest``, a full id or a prefix of at least
    four hex digits, resolved among this CVD's snapshots only (another CVD's snapshot
    never matches, nor makes a prefix ambiguous)."""
    return resolve_snapshot(store.catalog.snapshots(fleet.cvd_source(cvd_id)), ref)


def resolve_snapshot(snaps: Sequence[SnapshotRecord], ref: str) -> SnapshotRecord:
    """``ref`` among ``snaps`` (oldest first): ``latest``, an id, or a unique id prefix."""
    if ref == "latest":
        if not snaps:
            raise NotFoundError("the CVD has no snapshots yet")
        return snaps[-1]
    want = ref.lower()
    if len(want) < 4 or any(ch not in "0123456789abcdef" for ch in want):
        raise UsageError(f"snapshot reference {ref!r}: give 'latest' or at least 4 hex digits")
    found = [s for s in snaps if s.id.startswith(want)]
    exact = [s for s in found if s.id == want]
    if exact:
        return exact[0]
    if not found:
        raise NotFoundError(f"this CVD has no snapshot {ref}")
    if len(found) > 1:
        raise ConflictError(f"snapshot prefix {ref} is ambiguous in this CVD: give more digits")
    return found[0]


def request_restore(
    engine: Engine, store: Store, actor: Principal, ref: str, req: RestoreRequest
) -> TaskPublic:
    cvd = fleet.cvd_for_access(engine, actor, ref, "cvd.operate")
    snap = snapshot_of(store, cvd.id, req.snapshot)
    if not req.paths:
        raise UsageError(
            "name the paths to restore on the endpoint: restoring its whole root in place is refused"
        )
    for p in req.paths:
        if not split_path(p):
            raise UsageError(f"{p!r} is the endpoint's root: name paths inside it")
    return _device_task(
        engine,
        actor,
        ref,
        TaskKind.RESTORE,
        RestoreParams(
            snapshot=snap.id, root=snap.root.hex(), paths=req.paths, overwrite=req.overwrite
        ),
    )


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _recorded_policy(value: object) -> PolicySettings | None:
    """The policy a snapshot recorded (device-written stats: validated, else unknown)."""
    if not isinstance(value, dict):
        return None
    try:
        return PolicySettings(**value)
    except ValidationError:
        return None


def request_revert(
    engine: Engine, store: Store, actor: Principal, ref: str, req: RevertRequest
) -> TaskPublic:
    """Queue a revert (or its dry run). The agent plans it against the live root,
    removing only what the snapshot's policy protected: the task carries that
    policy (recorded in the snapshot, else the CVD's if still the same version)."""
    cvd = fleet.cvd_for_access(engine, actor, ref, "cvd.operate")
    snap = snapshot_of(store, cvd.id, req.snapshot)
    stats = snap.meta.get("stats") or {}
    policy = _recorded_policy(stats.get("policy"))
    if policy is None:
        with read_tx(engine) as c:
            p = c.execute(select(policies).where(policies.c.id == cvd.policy_id)).first()
        if p is not None and stats.get("policy_version") == p.version:
            policy = _recorded_policy(p.settings)
    return _device_task(
        engine,
        actor,
        ref,
        TaskKind.REVERT,
        RevertParams(
            snapshot=snap.id,
            root=snap.root.hex(),
            system_only=req.system_only,
            dry_run=req.dry_run,
            policy=policy,
            error_paths=[p for p in _list(stats.get("error_paths")) if isinstance(p, str)],
            scan_errors=errors
            if isinstance(errors := stats.get("errors"), int) and errors > 0
            else 0,
        ),
    )


def list_snapshots(
    engine: Engine, store: Store, actor: Principal, ref: str
) -> list[SnapshotPublic]:
    cvd = fleet.cvd_for_access(engine, actor, ref)
    return [snapshot_public(s) for s in store.catalog.snapshots(fleet.cvd_source(cvd.id))]


def _walk_to(store: Store, root: bytes, path: str) -> tuple[list[Entry], Entry | None]:
    """The entries of the folder at ``path`` (or the entry itself if it is not a folder)."""
    parts = split_path(path)
    if not parts:
        return decode_tree(store.get(root)), None
    found = lookup(store.get, root, parts)
    if found is None:
        raise NotFoundError(f"{path!r} is not in the snapshot")
    if found.subtree is None:
        return [], found
    return decode_tree(store.get(found.subtree)), None


def browse(
    engine: Engine, store: Store, actor: Principal, ref: str, snapshot: str, path: str
) -> list[BrowseEntry]:
    cvd = fleet.cvd_for_access(engine, actor, ref)
    snap = snapshot_of(store, cvd.id, snapshot)
    entries, single = _walk_to(store, snap.root, path)
    if single is not None:
        entries = [single]
    return [
        BrowseEntry(
            id=os.fsdecode(e.name),
            name=os.fsdecode(e.name),
            type=e.type,
            size=e.size,
            mode=e.mode,
            uid=e.uid,
            gid=e.gid,
            mtime=e.mtime,
            target=os.fsdecode(e.target) if e.target else None,
        )
        for e in entries
    ]


def file_entry(
    engine: Engine, store: Store, actor: Principal, ref: str, snapshot: str, path: str
) -> Entry:
    """The entry of a file to download (``data.read``); the download is audited."""
    cvd = fleet.cvd_for_access(engine, actor, ref, DATA_READ)
    snap = snapshot_of(store, cvd.id, snapshot)
    _, single = _walk_to(store, snap.root, path)
    if single is None or single.type != "file":
        raise UsageError(f"{path!r} is not a file")
    with write_tx(engine) as c:
        audit(c, actor.name, "cvd.download", cvd.id, snapshot=snap.id, path=path, size=single.size)
    return single


def start_download(
    engine: Engine, store: Store, actor: Principal, ref: str, snapshot: str, paths: list[str]
) -> DownloadPublic:
    """A restore as download (``cvd restore --output``): the snapshot whose trees the
    caller then reads through ``/blobs/read``, and the id key to ask for its blobs as
    stored and verify each one (``DownloadPublic``). Needs ``data.read``; audited."""
    cvd = fleet.cvd_for_access(engine, actor, ref, DATA_READ)
    snap = snapshot_of(store, cvd.id, snapshot)
    for p in paths:
        split_path(p)
    with write_tx(engine) as c:
        audit(c, actor.name, "cvd.restore_download", cvd.id, snapshot=snap.id, paths=paths)
    return DownloadPublic(
        **snapshot_public(snap).model_dump(), id_key=store.keys.chunking.id_key.hex()
    )
