"""The flex laptop's routes: the server's signing key and ``/flex/my``, the caller's
entitlements and instances (create, manifest, pieces, check-in)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from lamina.protocol.flex import (
    FlexCheckin,
    FlexEntitlementMine,
    FlexInstanceCreate,
    FlexInstanceCreated,
    FlexInstanceMine,
    FlexKeyPublic,
    FlexManifest,
    Lease,
    Signed,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import flex, flex_keys

router = APIRouter()


def _server_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


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
