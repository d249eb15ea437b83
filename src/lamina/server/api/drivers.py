"""Driver pack routes: import, list, show, delete (``driver_profiles.py`` has the profiles
that choose where packs go)."""

from __future__ import annotations

import tempfile

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from lamina.protocol.layers import DriverPackPublic
from lamina.server.deps import Caller, Ctx, stream_body
from lamina.server.services import drivers

router = APIRouter()
#: The import body: an uncompressed tar of the pack's folder (``lamina driver import``).
TAR = "application/x-tar"
#: An upload is kept in memory up to this size, then spilled to a temporary file.
_SPOOL = 16 * 1024 * 1024


@router.get("/drivers", summary="List driver packs with their versions")
def list_packs(ctx: Ctx, caller: Caller) -> list[DriverPackPublic]:
    return drivers.list_packs(ctx.engine, caller)


@router.post(
    "/drivers/import",
    summary="Import a new version of a driver pack from a tar of its folder",
    status_code=201,
    openapi_extra={
        "requestBody": {"content": {TAR: {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def import_pack(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    name: str = Query(min_length=1, max_length=128),
    notes: str = Query("", max_length=4000),
) -> DriverPackPublic:
    caller.require("driver.write")  # before reading a large body
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL) as f:
        await stream_body(request, ctx.settings.max_body, f.write, "the pack")
        f.seek(0)
        doc = await run_in_threadpool(
            drivers.import_pack, ctx.engine, ctx.store, caller, name, f, notes
        )
    return doc


@router.get("/drivers/{ref}", summary="Show a driver pack: versions, packages, files")
def show_pack(ref: str, ctx: Ctx, caller: Caller) -> DriverPackPublic:
    return drivers.show_pack(ctx.engine, caller, ref)


@router.delete(
    "/drivers/{ref}", summary="Delete a driver pack no profile names and no endpoint runs"
)
def delete_pack(ref: str, ctx: Ctx, caller: Caller) -> DriverPackPublic:
    return drivers.delete_pack(ctx.engine, caller, ref)
