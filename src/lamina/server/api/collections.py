"""Collection routes: create and list collections of CVDs (``layers.py`` assigns layers to
a collection's members)."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.schemas import CollectionCreate, CollectionPublic
from lamina.server.deps import Caller, Ctx
from lamina.server.services import collections

router = APIRouter()


@router.post(
    "/collections",
    summary="Create a collection of CVDs (static members and/or a filter on device facts)",
    status_code=201,
)
def create_collection(req: CollectionCreate, ctx: Ctx, caller: Caller) -> CollectionPublic:
    return collections.create(ctx.engine, caller, req.name, req.filter, req.cvds)


@router.get("/collections", summary="List collections with their current members")
def list_collections(ctx: Ctx, caller: Caller) -> list[CollectionPublic]:
    return collections.list_collections(ctx.engine, caller)
