"""Store maintenance routes: check, garbage collection and statistics, each a server task
(``services/store_ops.py``) whose progress and report ``GET /tasks/{id}`` shows."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.schemas import TaskPublic
from lamina.protocol.tasks import StoreCheckParams, StoreGcParams, StoreStatsParams, TaskKind
from lamina.server.deps import Caller, Ctx
from lamina.server.services import store_ops

router = APIRouter()


@router.post("/store/check", summary="Start a check of the server's store", status_code=202)
def store_check(req: StoreCheckParams, ctx: Ctx, caller: Caller) -> TaskPublic:
    return store_ops.start(ctx.engine, ctx.store, caller, TaskKind.STORE_CHECK, req)


@router.post(
    "/store/gc",
    summary="Start a garbage collection of the server's store (a dry run unless asked)",
    status_code=202,
)
def store_gc(req: StoreGcParams, ctx: Ctx, caller: Caller) -> TaskPublic:
    return store_ops.start(ctx.engine, ctx.store, caller, TaskKind.STORE_GC, req)


@router.post(
    "/store/stats",
    summary="Start counting the server's store: packs, bytes, dedup",
    status_code=202,
)
def store_stats(ctx: Ctx, caller: Caller) -> TaskPublic:
    return store_ops.start(ctx.engine, ctx.store, caller, TaskKind.STORE_STATS, StoreStatsParams())
