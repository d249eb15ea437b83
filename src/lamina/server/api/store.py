"""Store maintenance routes: check, garbage collection and statistics, each a server task
(``services/store_ops.py``) whose progress and report ``GET /tasks/{id}`` shows.

Each route takes its kind's parameters (``lamina.protocol.tasks``) as its body (none: the
defaults; gc's default is a dry run) and answers 202 with the task."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from lamina.protocol.schemas import TaskPublic
from lamina.protocol.tasks import (
    StoreCheckParams,
    StoreGcParams,
    StoreStatsParams,
    TaskKind,
    TaskParams,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import store_ops

router = APIRouter()

#: path, kind, parameters, summary
ROUTES: tuple[tuple[str, TaskKind, type[TaskParams], str], ...] = (
    ("/store/check", TaskKind.STORE_CHECK, StoreCheckParams, "Start a check of the server's store"),
    (
        "/store/gc",
        TaskKind.STORE_GC,
        StoreGcParams,
        "Start a garbage collection of the server's store (a dry run unless asked)",
    ),
    (
        "/store/stats",
        TaskKind.STORE_STATS,
        StoreStatsParams,
        "Start counting the server's store: packs by size, bytes, dedup",
    ),
)


def _route(kind: TaskKind, model: type[TaskParams]) -> Callable[..., TaskPublic]:
    def start(ctx: Ctx, caller: Caller, req: TaskParams | None = None) -> TaskPublic:
        return store_ops.start(ctx.engine, ctx.store, caller, kind, req or model())

    start.__annotations__ = {**start.__annotations__, "req": model | None}
    start.__name__ = f"store_{kind.value.removeprefix('store-')}"
    return start


for _path, _kind, _model, _summary in ROUTES:
    router.add_api_route(
        _path,
        _route(_kind, _model),
        methods=["POST"],
        summary=_summary,
        status_code=202,
        response_model=TaskPublic,
    )
