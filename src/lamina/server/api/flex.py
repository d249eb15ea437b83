"""Flex routes: images, policies, entitlements, instances (admin) and ``/flex/my`` and
``/flex/key`` (the laptop). Each parses, calls one service function, returns."""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from lamina.protocol.flex import (
    FlexCheckin,
    FlexEntitle,
    FlexEntitlementMine,
    FlexEntitlementPublic,
    FlexEntitlementUpdate,
    FlexImagePublic,
    FlexInstanceAction,
    FlexInstanceCreate,
    FlexInstanceCreated,
    FlexInstanceMine,
    FlexInstancePublic,
    FlexKeyPublic,
    FlexManifest,
    FlexPolicyCreate,
    FlexPolicyPublic,
    FlexPolicyUpdate,
    FlexRegisterUrl,
    FlexSetPolicy,
    GroupCreate,
    GroupMembers,
    GroupPublic,
    Lease,
    Signed,
)
from lamina.server.context import ServerContext
from lamina.server.deps import Caller, Ctx
from lamina.server.security import Principal
from lamina.server.services import flex, flex_images, flex_keys, flex_policies, groups

router = APIRouter()

#: The one upload path (its body limit is the image size limit, see ``app.py``).
UPLOAD_PATH = "/flex/images/upload"


def _server_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


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


def _set_state(
    ctx: ServerContext, caller: Principal, ref: str, state: str, req: FlexInstanceAction
) -> FlexInstancePublic:
    return flex.set_state(ctx.engine, caller, ref, state, req.message)


@router.post("/flex/instances/{ref}/lock", summary="Lock an instance: it refuses to start")
def lock_instance(
    ref: str, req: FlexInstanceAction, ctx: Ctx, caller: Caller
) -> FlexInstancePublic:
    return _set_state(ctx, caller, ref, flex.LOCKED, req)


@router.post("/flex/instances/{ref}/unlock", summary="Unlock a locked instance")
def unlock_instance(
    ref: str, req: FlexInstanceAction, ctx: Ctx, caller: Caller
) -> FlexInstancePublic:
    return _set_state(ctx, caller, ref, flex.ACTIVE, req)


@router.post("/flex/instances/{ref}/revoke", summary="Revoke an instance: the laptop deletes it")
def revoke_instance(
    ref: str, req: FlexInstanceAction, ctx: Ctx, caller: Caller
) -> FlexInstancePublic:
    return _set_state(ctx, caller, ref, flex.REVOKED, req)


@router.put("/flex/instances/{ref}/policy", summary="Override (or clear) an instance's policy")
def set_instance_policy(
    ref: str, req: FlexSetPolicy, ctx: Ctx, caller: Caller
) -> FlexInstancePublic:
    return flex.set_instance_policy(ctx.engine, caller, ref, req.policy)


# --- groups -----------------------------------------------------------------------------------------
@router.post("/groups", summary="Create a group of users", status_code=201)
def create_group(req: GroupCreate, ctx: Ctx, caller: Caller) -> GroupPublic:
    return groups.create_group(ctx.engine, caller, req)


@router.get("/groups", summary="List groups with their members")
def list_groups(ctx: Ctx, caller: Caller) -> list[GroupPublic]:
    return groups.list_groups(ctx.engine, caller)


@router.get("/groups/{name}", summary="Show a group")
def show_group(name: str, ctx: Ctx, caller: Caller) -> GroupPublic:
    return groups.show_group(ctx.engine, caller, name)


@router.post("/groups/{name}/members", summary="Add members to a group")
def add_members(name: str, req: GroupMembers, ctx: Ctx, caller: Caller) -> GroupPublic:
    return groups.add_members(ctx.engine, caller, name, req.members)


@router.post("/groups/{name}/members/remove", summary="Remove members from a group")
def remove_members(name: str, req: GroupMembers, ctx: Ctx, caller: Caller) -> GroupPublic:
    return groups.remove_members(ctx.engine, caller, name, req.members)


@router.delete("/groups/{name}", summary="Delete a group", status_code=204)
def delete_group(name: str, ctx: Ctx, caller: Caller) -> None:
    groups.delete_group(ctx.engine, caller, name)


# --- the laptop ----------------------------------------------------------------------------------------
@router.get("/flex/key", summary="The server's flex signing key (Ed25519, raw, base64)")
def key(ctx: Ctx, caller: Caller) -> FlexKeyPublic:
    caller.require("flex.use")
    return flex_keys.public_key(ctx.settings.data)


@router.get("/flex/my/entitlements", summary="The flex images the caller is entitled to")
def my_entitlements(ctx: Ctx, caller: Caller) -> list[FlexEntitlementMine]:
    return flex.my_entitlements(ctx.engine, caller)


@router.get("/flex/my/instances", summary="The caller's flex instances")
def my_instances(ctx: Ctx, caller: Caller) -> list[FlexInstanceMine]:
    return flex.my_instances(ctx.engine, caller)


@router.post(
    "/flex/my/instances", summary="Create an instance: signed manifest and lease", status_code=201
)
def create_instance(
    req: FlexInstanceCreate, ctx: Ctx, caller: Caller, request: Request
) -> FlexInstanceCreated:
    return flex.create_instance(
        ctx.engine,
        flex_keys.signing_key(ctx.settings.data),
        caller,
        req.entitlement,
        req.client,
        _server_url(request),
    )


@router.get(
    "/flex/my/instances/{ref}/manifest", summary="The signed manifest of the caller's instance"
)
def my_manifest(ref: str, ctx: Ctx, caller: Caller) -> Signed[FlexManifest]:
    return flex.my_manifest(ctx.engine, flex_keys.signing_key(ctx.settings.data), caller, ref)


@router.get(
    "/flex/my/instances/{ref}/pieces/{n}",
    summary="The plaintext bytes of one piece of the caller's active instance",
    response_class=Response,
)
def my_piece(ref: str, n: int, ctx: Ctx, caller: Caller) -> Response:
    data = flex.my_piece(ctx.engine, ctx.store, caller, ref, n)
    return Response(data, media_type="application/octet-stream")


@router.post("/flex/my/instances/{ref}/checkin", summary="Check in: renew the lease, learn changes")
def checkin(
    ref: str, req: FlexCheckin, ctx: Ctx, caller: Caller, request: Request
) -> Signed[Lease]:
    return flex.checkin(
        ctx.engine,
        flex_keys.signing_key(ctx.settings.data),
        caller,
        ref,
        req.client_time,
        _server_url(request),
    )
