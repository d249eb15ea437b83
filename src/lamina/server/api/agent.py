"""Routes for enrolled agents: enroll, config and status, missing chunks, bundles, commit, work."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from lamina.protocol.bundle import MEDIA_TYPE
from lamina.protocol.schemas import (
    AgentConfig,
    AgentStatusReport,
    CommitRequest,
    CommitResponse,
    EnrollRequest,
    EnrollResponse,
    MissingRequest,
    MissingResponse,
    PolicySettings,
    TaskPublic,
    TaskReport,
    WorkItem,
)
from lamina.server.deps import Ctx, Device, read_body
from lamina.server.services import fleet, layers, sync, tasks
from lamina.store.retention import Retention

router = APIRouter(prefix="/agent")
_WORKER = f"server-{uuid.uuid4().hex[:8]}"


@router.post("/enroll", summary="Enroll a device with an enrollment token", status_code=201)
def enroll(req: EnrollRequest, ctx: Ctx) -> EnrollResponse:
    return fleet.enroll(ctx.engine, req, ctx.store.keys.chunking)


@router.post("/config", summary="Report the agent's state; get its CVD and policy")
def config(report: AgentStatusReport, ctx: Ctx, device: Device) -> AgentConfig:
    cfg = fleet.agent_config(ctx.engine, device, report.model_dump())
    cfg.gc_epoch = ctx.store.catalog.gc_epoch()
    return cfg


@router.post("/missing", summary="Which of these blob ids the server lacks")
def missing(req: MissingRequest, ctx: Ctx, device: Device) -> MissingResponse:
    fleet.active_cvd_of_device(ctx.engine, device)
    return MissingResponse(missing=sync.missing(ctx.store, req.ids))


@router.post(
    "/bundles",
    summary=f"Upload a bundle of compressed blobs ({MEDIA_TYPE})",
    openapi_extra={
        "requestBody": {"content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def bundle(request: Request, ctx: Ctx, device: Device) -> dict[str, int]:
    await run_in_threadpool(fleet.active_cvd_of_device, ctx.engine, device)
    body = await read_body(request, ctx.settings.max_body)
    new = await run_in_threadpool(sync.upload_bundle, ctx.store, body)
    return {"new": new}


@router.post("/commit", summary="Commit a snapshot whose trees and chunks are uploaded")
def commit(req: CommitRequest, ctx: Ctx, device: Device) -> CommitResponse:
    cvd = fleet.active_cvd_of_device(ctx.engine, device)
    cfg = fleet.agent_config(ctx.engine, device)
    p = cfg.policy or PolicySettings()
    retention = Retention(p.keep_last, p.keep_hourly, p.keep_daily, p.keep_weekly, p.keep_monthly)
    resp = sync.commit(ctx.engine, ctx.store, cvd, req, retention)
    layers.after_commit(
        ctx.engine, ctx.store, cvd.id, ctx.store.catalog.find_snapshot(resp.snapshot.id)
    )
    return resp


@router.get(
    "/work",
    summary="Claim the tasks queued for this device (restarted: requeue its cut-short ones first)",
)
def work(ctx: Ctx, device: Device, restarted: bool = False) -> list[WorkItem]:
    return tasks.claim_for_device(ctx.engine, device, _WORKER, restarted)


@router.post("/tasks/{task_id}", summary="Report progress or the end of a task")
def report(task_id: str, rep: TaskReport, ctx: Ctx, device: Device) -> TaskPublic:
    return tasks.report(ctx.engine, device, task_id, rep)


@router.get("/tasks/{task_id}", summary="One of this device's tasks (was a staged one cancelled?)")
def show_task(task_id: str, ctx: Ctx, device: Device) -> TaskPublic:
    return tasks.get_for_device(ctx.engine, device, task_id)
