"""Task routes for users: list, show, cancel (``agent.py`` has the device's side)."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.schemas import TaskPublic
from lamina.server.deps import Caller, Ctx
from lamina.server.services import tasks

router = APIRouter()


@router.get("/tasks", summary="List tasks, newest first")
def list_tasks(
    ctx: Ctx, caller: Caller, state: str | None = None, cvd: str | None = None
) -> list[TaskPublic]:
    return tasks.list_tasks(ctx.engine, caller, state, cvd)


@router.get("/tasks/{task_id}", summary="Show a task with its progress")
def show_task(task_id: str, ctx: Ctx, caller: Caller) -> TaskPublic:
    return tasks.get(ctx.engine, caller, task_id)


@router.post(
    "/tasks/{task_id}/cancel",
    summary="Cancel a task that is queued, or staged on its endpoint and not applied yet",
)
def cancel_task(task_id: str, ctx: Ctx, caller: Caller) -> TaskPublic:
    return tasks.cancel(ctx.engine, caller, task_id)
