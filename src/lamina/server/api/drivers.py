"""Driver library routes: packs (import, list, show, delete) and profiles (CRUD, test)."""

from __future__ import annotations

import tempfile

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from lamina.protocol.layers import (
    DriverPackPublic,
    DriverProfileCreate,
    DriverProfilePublic,
    DriverProfileUpdate,
    MatchedDevicePublic,
)
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


@router.get("/driver-profiles", summary="List driver profiles")
def list_profiles(ctx: Ctx, caller: Caller) -> list[DriverProfilePublic]:
    return drivers.list_profiles(ctx.engine, caller)


@router.post(
    "/driver-profiles",
    summary="Create a driver profile: packs for matching hardware",
    status_code=201,
)
def create_profile(req: DriverProfileCreate, ctx: Ctx, caller: Caller) -> DriverProfilePublic:
    return drivers.create_profile(
        ctx.engine, caller, req.name, req.packs, req.matches, req.os_family, req.notes
    )


@router.get("/driver-profiles/{ref}", summary="Show a driver profile")
def show_profile(ref: str, ctx: Ctx, caller: Caller) -> DriverProfilePublic:
    return drivers.show_profile(ctx.engine, caller, ref)


@router.put(
    "/driver-profiles/{ref}", summary="Change a driver profile's packs, matches or OS family"
)
def update_profile(
    ref: str, req: DriverProfileUpdate, ctx: Ctx, caller: Caller
) -> DriverProfilePublic:
    return drivers.update_profile(
        ctx.engine, caller, ref, req.packs, req.matches, req.os_family, req.notes
    )


@router.delete("/driver-profiles/{ref}", summary="Delete a driver profile")
def delete_profile(ref: str, ctx: Ctx, caller: Caller) -> DriverProfilePublic:
    return drivers.delete_profile(ctx.engine, caller, ref)


@router.get("/driver-profiles/{ref}/devices", summary="The devices a driver profile matches today")
def test_profile(ref: str, ctx: Ctx, caller: Caller) -> list[MatchedDevicePublic]:
    return [
        MatchedDevicePublic.model_validate(d) for d in drivers.test_profile(ctx.engine, caller, ref)
    ]
