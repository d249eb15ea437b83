"""CVD routes: list, show, snapshots, browse, fetch a file, sync, restore, revert, archive."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from lamina.protocol.schemas import (
    BrowseEntry,
    CvdPublic,
    DownloadPublic,
    DownloadRequest,
    RestoreRequest,
    RevertRequest,
    SnapshotPublic,
    TaskPublic,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import cvd_ops, fleet
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
def fetch_file(ref: str, snapshot: str, ctx: Ctx, caller: Caller, path: str) -> StreamingResponse:
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
) -> DownloadPublic:
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
