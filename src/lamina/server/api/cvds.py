"""CVD routes: list, show, snapshots, browse, fetch a file, sync, restore, revert, archive; blobs."""

from __future__ import annotations

import msgpack
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from lamina.protocol.schemas import (
    BlobsRequest,
    BrowseEntry,
    CvdPublic,
    DeltasRequest,
    DownloadRequest,
    RestoreRequest,
    RevertRequest,
    SnapshotPublic,
    TaskPublic,
)
from lamina.server.deps import ActiveDevice, Caller, Ctx, Limits, active_device
from lamina.server.services import access, cvd_ops, deltas, fleet
from lamina.server.services.sync import parse_ids
from lamina.tree.content import content_pieces

router = APIRouter()


@router.get("/cvds", summary="List CVDs")
def list_cvds(ctx: Ctx, caller: Caller) -> list[CvdPublic]:
    return fleet.list_cvds(ctx.engine, caller)


@router.get("/cvds/{ref}", summary="Show a CVD with its sync progress")
def show_cvd(ref: str, ctx: Ctx, caller: Caller) -> CvdPublic:
    return fleet.show_cvd(ctx.engine, caller, ref)


@router.get("/cvds/{ref}/snapshots", summary="A CVD's snapshots, oldest first")
def snapshots(ref: str, ctx: Ctx, caller: Caller) -> list[SnapshotPublic]:
    return cvd_ops.list_snapshots(ctx.engine, ctx.store, caller, ref)


@router.get(
    "/cvds/{ref}/snapshots/{snapshot}/browse", summary="List a folder of a snapshot (read-only)"
)
def browse(ref: str, snapshot: str, ctx: Ctx, caller: Caller, path: str = "") -> list[BrowseEntry]:
    return cvd_ops.browse(ctx.engine, ctx.store, caller, ref, snapshot, path)


@router.get("/cvds/{ref}/snapshots/{snapshot}/file", summary="Download one file of a snapshot")
def fetch_file(ref: str, snapshot: str, path: str, ctx: Ctx, caller: Caller) -> StreamingResponse:
    entry = cvd_ops.file_entry(ctx.engine, ctx.store, caller, ref, snapshot, path)
    # Holes in bounded pieces, chunks one at a time as they are read (in a worker
    # thread): a file's size, up to 2**63 whatever a device committed, never becomes
    # server memory.
    return StreamingResponse(
        content_pieces(entry, ctx.store.get_many),
        media_type="application/octet-stream",
        headers={"Content-Length": str(entry.size)},
    )


@router.post(
    "/cvds/{ref}/snapshots/{snapshot}/download",
    summary="Start a restore as download: the snapshot to read through /blobs/read (audited)",
)
def download(
    ref: str, snapshot: str, req: DownloadRequest, ctx: Ctx, caller: Caller
) -> SnapshotPublic:
    return cvd_ops.start_download(ctx.engine, ctx.store, caller, ref, snapshot, req.paths)


@router.post("/cvds/{ref}/sync", summary="Ask the CVD's agent to sync now", status_code=202)
def sync_now(ref: str, ctx: Ctx, caller: Caller) -> TaskPublic:
    return cvd_ops.request_sync(ctx.engine, caller, ref)


@router.post(
    "/cvds/{ref}/restore", summary="Restore files onto the endpoint (by its agent)", status_code=202
)
def restore(ref: str, req: RestoreRequest, ctx: Ctx, caller: Caller) -> TaskPublic:
    return cvd_ops.request_restore(ctx.engine, ctx.store, caller, ref, req)


@router.post(
    "/cvds/{ref}/revert",
    summary="Revert the endpoint to a snapshot at its next boot",
    status_code=202,
)
def revert(ref: str, req: RevertRequest, ctx: Ctx, caller: Caller) -> TaskPublic:
    return cvd_ops.request_revert(ctx.engine, ctx.store, caller, ref, req)


@router.post("/cvds/{ref}/archive", summary="Detach the device; keep the CVD read-only")
def archive(ref: str, ctx: Ctx, caller: Caller) -> CvdPublic:
    return fleet.archive(ctx.engine, caller, ref)


@router.post(
    "/blobs/read",
    summary="Plaintext of blobs by id (msgpack list, possibly a prefix), verified by the server",
    response_class=Response,
)
def read_blobs(
    req: BlobsRequest, ctx: Ctx, caller: Caller, request: Request, limits: Limits
) -> Response:
    # Users need "data.read" (and each read is audited). A device reads only blobs of
    # its own CVD or of a tree delivered to it (services/access.py): every agent holds
    # the id key, so an id alone proves nothing.
    if caller.kind == "user":
        caller.require(cvd_ops.DATA_READ)
    ids = parse_ids(req.ids)
    if caller.kind == "device":
        device = active_device(caller)
        cvd = fleet.active_cvd_of_device(ctx.engine, device)
        limits.reads.take(device.id, len(ids))
        access.check_read(ctx.engine, ctx.store, limits.trees, device.id, cvd, ids)
    data: list[bytes] = []
    size = 0
    for blob in ctx.store.get_many(ids):
        data.append(blob)
        size += len(blob)
        if size >= READ_LIMIT:  # a prefix: the client asks for the rest again
            break
    ctx.reads.read(caller, len(data), size)  # a user's: audited (services/read_audit.py)
    return Response(msgpack.packb(data, use_bin_type=True), media_type="application/msgpack")


#: Bytes of plaintext one /blobs/read answer carries at most (at least one blob).
READ_LIMIT = 32 * 1024 * 1024


@router.post(
    "/blobs/delta",
    summary="New versions of files as zstd deltas against the versions the device holds",
    response_class=Response,
)
def read_deltas(req: DeltasRequest, ctx: Ctx, device: ActiveDevice, limits: Limits) -> Response:
    # Devices only: the same access as /blobs/read, for the old and the new versions.
    cvd = fleet.active_cvd_of_device(ctx.engine, device)
    limits.reads.take(device.id, sum(len(i.base) + len(i.target) for i in req.items))
    cache = deltas.cache_for(ctx.settings.data, ctx.settings.delta_cache)
    out = deltas.deltas_for_device(
        ctx.engine, ctx.store, cache, limits.trees, device.id, cvd, req.items
    )
    body = {"v": deltas.ANSWER_VERSION, "deltas": out}
    return Response(msgpack.packb(body, use_bin_type=True), media_type="application/msgpack")
