"""CVD policy routes: create, list, show, change (``flex.py`` has the flex policies)."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.schemas import PolicyCreate, PolicyPublic, PolicyUpdate
from lamina.server.deps import Caller, Ctx
from lamina.server.services import policies

router = APIRouter()


@router.post("/policies", summary="Create a CVD policy", status_code=201)
def create_policy(req: PolicyCreate, ctx: Ctx, caller: Caller) -> PolicyPublic:
    return policies.create(ctx.engine, caller, req)


@router.get("/policies", summary="List CVD policies")
def list_policies(ctx: Ctx, caller: Caller) -> list[PolicyPublic]:
    return policies.list_policies(ctx.engine, caller)


@router.get("/policies/{ref}", summary="Show a CVD policy")
def show_policy(ref: str, ctx: Ctx, caller: Caller) -> PolicyPublic:
    return policies.show(ctx.engine, caller, ref)


@router.put("/policies/{ref}", summary="Change a policy; its CVDs move to the new version")
def update_policy(ref: str, req: PolicyUpdate, ctx: Ctx, caller: Caller) -> PolicyPublic:
    return policies.update_policy(ctx.engine, caller, ref, req)
