"""Group routes: groups of users (flex entitlements name them), their members."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.flex import GroupCreate, GroupMembers, GroupPublic
from lamina.server.deps import Caller, Ctx
from lamina.server.services import groups

router = APIRouter()


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
