"""Device routes: list and show devices, reject or revoke one, centralize a pending one
(``migration.py`` has the provisioning of a pending device)."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.schemas import CentralizeRequest, CvdPublic, DevicePublic
from lamina.server.deps import Caller, Ctx
from lamina.server.services import fleet

router = APIRouter()


@router.get("/devices", summary="List devices (optionally only pending ones)")
def list_devices(ctx: Ctx, caller: Caller, pending: bool = False) -> list[DevicePublic]:
    return fleet.list_devices(ctx.engine, caller, pending)


@router.get("/devices/{ref}", summary="One device with its hardware facts")
def show_device(ref: str, ctx: Ctx, caller: Caller) -> DevicePublic:
    return fleet.show_device(ctx.engine, caller, ref)


@router.post("/devices/{ref}/reject", summary="Reject a pending device")
def reject_device(ref: str, ctx: Ctx, caller: Caller) -> DevicePublic:
    return fleet.reject(ctx.engine, caller, ref)


@router.post(
    "/devices/{ref}/revoke", summary="Revoke a device's credential: it stops working at once"
)
def revoke_device(ref: str, ctx: Ctx, caller: Caller) -> DevicePublic:
    return fleet.revoke(ctx.engine, caller, ref)


@router.post(
    "/devices/{ref}/centralize", summary="Create the CVD of a pending device", status_code=201
)
def centralize(ref: str, req: CentralizeRequest, ctx: Ctx, caller: Caller) -> CvdPublic:
    return fleet.centralize(ctx.engine, caller, ref, req)
