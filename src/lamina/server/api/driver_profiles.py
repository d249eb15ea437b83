"""Driver profile routes: which driver packs go to which hardware (create, list, show,
change, delete, and the devices a profile matches today). ``drivers.py`` has the packs."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.layers import (
    DriverProfileCreate,
    DriverProfilePublic,
    DriverProfileUpdate,
    MatchedDevicePublic,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import drivers

router = APIRouter()


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
