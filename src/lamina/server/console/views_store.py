"""The Store page: check, garbage collection (its dry run first) and statistics of the
server's store, each a server task (``services/store_ops.py``) watched on its task page."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response

from lamina.protocol.tasks import StoreCheckParams, StoreGcParams, StoreStatsParams, TaskKind
from lamina.server.console.web import Actor, ConsoleRoute, Ctx, render, see_other
from lamina.server.services import store_ops

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


@router.get("/store")
def store_page(request: Request, ctx: Ctx, actor: Actor) -> Response:
    return render(request, "store.html", actor, store=store_ops.overview(ctx.engine, actor))


@router.post("/store/check")
def store_check(ctx: Ctx, actor: Actor, read_data: Annotated[str, Form()] = "") -> Response:
    params = StoreCheckParams(read_data=bool(read_data))
    t = store_ops.start(ctx.engine, ctx.store, actor, TaskKind.STORE_CHECK, params)
    return see_other(f"/tasks/{t.id}")


@router.post("/store/gc/preview")
def store_gc_preview(ctx: Ctx, actor: Actor) -> Response:
    """The dry run: what gc would free, shown on its task page with the button that runs it."""
    params = StoreGcParams(dry_run=True)
    t = store_ops.start(ctx.engine, ctx.store, actor, TaskKind.STORE_GC, params)
    return see_other(f"/tasks/{t.id}")


@router.post("/store/gc")
def store_gc(
    ctx: Ctx, actor: Actor, orphan_grace: Annotated[int, Form(ge=600, le=366 * 86400)] = 3600
) -> Response:
    params = StoreGcParams(dry_run=False, orphan_grace=orphan_grace)
    t = store_ops.start(ctx.engine, ctx.store, actor, TaskKind.STORE_GC, params)
    return see_other(f"/tasks/{t.id}")


@router.post("/store/stats")
def store_stats(ctx: Ctx, actor: Actor) -> Response:
    t = store_ops.start(ctx.engine, ctx.store, actor, TaskKind.STORE_STATS, StoreStatsParams())
    return see_other(f"/tasks/{t.id}")
