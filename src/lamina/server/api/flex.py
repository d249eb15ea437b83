"""Flex routes for administrators: images, policies, entitlements, instances. Each parses,
calls one service function, returns (``flex_my.py`` has the laptop's routes, ``groups.py``
the groups that entitlements name)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from lamina.protocol.flex import (
    FlexEntitle,
    FlexEntitlementPublic,
    FlexEntitlementUpdate,
    FlexImagePublic,
    FlexInstanceAction,
    FlexInstancePublic,
    FlexPolicyCreate,
    FlexPolicyPublic,
    FlexPolicyUpdate,
    FlexRegisterUrl,
    FlexSetPolicy,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import flex, flex_images, flex_policies

router = APIRouter()

#: The one upload path (its body limit is the image size limit, see ``app.py``).
UPLOAD_PATH = "/flex/images/upload"


# --- images ---------------------------------------------------------------------------------
@router.post(
    UPLOAD_PATH, summary="Register a disk image (streamed body) as a new version", status_code=201
)
async def upload_image(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    name: Annotated[str, Query(max_length=128)],
    memory_mib: Annotated[int, Query(ge=16, le=4 << 20)] = 1024,
    cpus: Annotated[int, Query(ge=1, le=1024)] = 1,
    firmware: Literal["bios", "uefi"] = "bios",
) -> FlexImagePublic:
    caller.require("flex.admin")  # before reading a byte of the body
    work = flex_images.tmp_dir(ctx.settings.data)
    disk = work / f"{secrets.token_hex(8)}.upload"
    try:
        digest = await flex_images.spool(request.stream(), disk)
        doc = await run_in_threadpool(
            flex_images.register,
            ctx.engine,
            ctx.store,
            caller,
            name,
            disk,
            work,
            memory_mib,
            cpus,
            firmware,
            {"kind": "upload", "sha256": digest},
        )
        return doc
    finally:
        disk.unlink(missing_ok=True)


@router.post(
    "/flex/images/{name}/url",
    summary="Register an image the server fetches by URL and SHA-256",
    status_code=201,
)
def register_url(name: str, req: FlexRegisterUrl, ctx: Ctx, caller: Caller) -> FlexImagePublic:
    return flex_images.register_url(ctx.engine, ctx.store, caller, ctx.settings.data, name, req)


@router.get("/flex/images", summary="List flex images with their versions")
def list_images(ctx: Ctx, caller: Caller) -> list[FlexImagePublic]:
    return flex_images.list_images(ctx.engine, caller)


@router.get("/flex/images/{ref}", summary="Show a flex image")
def show_image(ref: str, ctx: Ctx, caller: Caller) -> FlexImagePublic:
    return flex_images.show_image(ctx.engine, caller, ref)


@router.delete(
    "/flex/images/{ref}", summary="Delete a flex image no entitlement names", status_code=204
)
def delete_image(ref: str, ctx: Ctx, caller: Caller) -> None:
    flex_images.delete_image(ctx.engine, ctx.store, caller, ref)


# --- policies -----------------------------------------------------------------------------------
@router.post("/flex/policies", summary="Create a flex restriction policy", status_code=201)
def create_policy(req: FlexPolicyCreate, ctx: Ctx, caller: Caller) -> FlexPolicyPublic:
    return flex_policies.create_policy(ctx.engine, caller, req)


@router.get("/flex/policies", summary="List flex policies")
def list_policies(ctx: Ctx, caller: Caller) -> list[FlexPolicyPublic]:
    return flex_policies.list_policies(ctx.engine, caller)


@router.get("/flex/policies/{ref}", summary="Show a flex policy")
def show_policy(ref: str, ctx: Ctx, caller: Caller) -> FlexPolicyPublic:
    return flex_policies.show_policy(ctx.engine, caller, ref)


@router.put("/flex/policies/{ref}", summary="Change a flex policy (instances get it at check-in)")
def update_policy(ref: str, req: FlexPolicyUpdate, ctx: Ctx, caller: Caller) -> FlexPolicyPublic:
    return flex_policies.update_policy(ctx.engine, caller, ref, req)


@router.delete("/flex/policies/{ref}", summary="Delete an unused flex policy", status_code=204)
def delete_policy(ref: str, ctx: Ctx, caller: Caller) -> None:
    flex_policies.delete_policy(ctx.engine, caller, ref)


# --- entitlements ---------------------------------------------------------------------------------
@router.post(
    "/flex/entitlements", summary="Entitle users or groups to a flex image", status_code=201
)
def entitle(req: FlexEntitle, ctx: Ctx, caller: Caller) -> FlexEntitlementPublic:
    return flex.entitle(ctx.engine, caller, req)


@router.get("/flex/entitlements", summary="List entitlements")
def list_entitlements(ctx: Ctx, caller: Caller) -> list[FlexEntitlementPublic]:
    return flex.list_entitlements(ctx.engine, caller)


@router.get("/flex/entitlements/{ref}", summary="Show an entitlement")
def show_entitlement(ref: str, ctx: Ctx, caller: Caller) -> FlexEntitlementPublic:
    return flex.show_entitlement(ctx.engine, caller, ref)


@router.put("/flex/entitlements/{ref}", summary="Change an entitlement's image, policy or subjects")
def update_entitlement(
    ref: str, req: FlexEntitlementUpdate, ctx: Ctx, caller: Caller
) -> FlexEntitlementPublic:
    return flex.update_entitlement(ctx.engine, caller, ref, req)


@router.delete(
    "/flex/entitlements/{ref}",
    summary="Delete an entitlement (its instances revoked)",
    status_code=204,
)
def delete_entitlement(ref: str, ctx: Ctx, caller: Caller) -> None:
    flex.delete_entitlement(ctx.engine, caller, ref)


# --- instances (admin) ---------------------------------------------------------------------------
@router.get("/flex/instances", summary="List flex instances")
def list_instances(ctx: Ctx, caller: Caller) -> list[FlexInstancePublic]:
    return flex.list_instances(ctx.engine, caller)


@router.get("/flex/instances/{ref}", summary="Show a flex instance")
def show_instance(ref: str, ctx: Ctx, caller: Caller) -> FlexInstancePublic:
    return flex.show_instance(ctx.engine, caller, ref)


def _state_route(state: str) -> Callable[..., FlexInstancePublic]:
    """The route that moves an instance to ``state``, with the administrator's message."""

    def route(ref: str, req: FlexInstanceAction, ctx: Ctx, caller: Caller) -> FlexInstancePublic:
        return flex.set_state(ctx.engine, caller, ref, state, req.message)

    return route


#: An instance's state changes: path, route name, the state it moves to, summary.
STATE_ROUTES = (
    (
        "/flex/instances/{ref}/lock",
        "lock_instance",
        flex.LOCKED,
        "Lock an instance: it refuses to start",
    ),
    ("/flex/instances/{ref}/unlock", "unlock_instance", flex.ACTIVE, "Unlock a locked instance"),
    (
        "/flex/instances/{ref}/revoke",
        "revoke_instance",
        flex.REVOKED,
        "Revoke an instance: the laptop deletes it",
    ),
)
for _path, _name, _state, _summary in STATE_ROUTES:
    router.add_api_route(
        _path, _state_route(_state), methods=["POST"], name=_name, summary=_summary
    )


@router.put("/flex/instances/{ref}/policy", summary="Override (or clear) an instance's policy")
def set_instance_policy(
    ref: str, req: FlexSetPolicy, ctx: Ctx, caller: Caller
) -> FlexInstancePublic:
    return flex.set_instance_policy(ctx.engine, caller, ref, req.policy)
