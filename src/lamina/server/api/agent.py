"""Routes for enrolled agents: enroll, config and status, missing chunks, bundles, commit, work."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from lamina.protocol.bundle import MEDIA_TYPE, decode_bundle
from lamina.protocol.endpoint import (
    AgentConfig,
    AgentStatusReport,
    BundleResponse,
    CommitRequest,
    CommitResponse,
    EnrollRequest,
    EnrollResponse,
    MissingRequest,
    MissingResponse,
)
from lamina.protocol.tasks import TaskPublic, TaskReport, WorkItem
from lamina.server.context import ServerContext
from lamina.server.deps import (
    ActiveDevice,
    Ctx,
    Device,
    Limits,
    PresentedDevice,
    held_body,
    intake_dir,
)
from lamina.server.security import Principal, require_active
from lamina.server.services import access, fleet, intake, sync, tasks, users
from lamina.server.services.credentials import Presented
from lamina.server.services.inflight import Sharing
from lamina.server.services.recent_uploads import RecentUploads

router = APIRouter(prefix="/agent")
_WORKER = f"server-{uuid.uuid4().hex[:8]}"


@router.post("/enroll", summary="Enroll a device with an enrollment token", status_code=201)
def enroll(req: EnrollRequest, ctx: Ctx) -> EnrollResponse:
    return fleet.enroll(ctx.engine, req, ctx.store.keys.chunking)


@router.post(
    "/config",
    summary="Report the agent's state; get its status, and once active its CVD, policy and chunking secret",
)
async def config(report: AgentStatusReport, ctx: Ctx, device: PresentedDevice) -> AgentConfig:
    # async, the work in one worker thread (``work`` alike): a plain ``def`` route takes
    # a second hop to validate its answer, and under load each hop waited for a thread
    # and the interpreter lock (docs/design.md, "Polls under load (session 10)"). The
    # credential is checked by the poll's own query (session 14).
    return await run_in_threadpool(_config, report, ctx, device)


def _config(
    report: AgentStatusReport, ctx: ServerContext, device: Principal | Presented
) -> AgentConfig:
    # the store's gc epoch is read in the poll's own query (its catalog is this database)
    return fleet.agent_config(
        ctx.engine,
        device,
        report.model_dump(exclude={"facts"}),
        ctx.store.keys.chunking,
        facts=report.facts,
        later=ctx.progress,
    )


@router.post(
    "/missing", summary="Which of these blob ids this CVD must upload (not stored, or not its own)"
)
async def missing(
    req: MissingRequest, ctx: Ctx, device: ActiveDevice, limits: Limits
) -> MissingResponse:
    # async, the work in one worker thread: a plain ``def`` route takes a second hop to
    # validate its answer (the hot routes of a sync: ``bundle``, ``commit`` alike). The
    # thread is one of the heavy requests' own (``limits.HeavyWork``), never a poll's.
    found = await limits.heavy.run(
        sync.device_missing, ctx.engine, ctx.store, device, req.ids, limits.missing, ctx.sharing
    )
    return MissingResponse(missing=found)


@router.post(
    "/bundles",
    summary=f"Upload a bundle of compressed blobs ({MEDIA_TYPE})",
    openapi_extra={
        "requestBody": {"content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def bundle(
    request: Request, ctx: Ctx, device: ActiveDevice, limits: Limits
) -> BundleResponse:
    heavy = limits.heavy
    cvd = await heavy.run(fleet.active_cvd_of_device, ctx.engine, device)
    spool = intake_dir(ctx.settings.data)
    async with held_body(request, ctx.settings.max_body, limits.bodies, spool) as body:
        items = await heavy.run(decode_bundle, body)  # once: verified and recorded below
        del body
        sharing = await heavy.run(access.sharing_of, ctx.engine, cvd.id, ctx.sharing)
        owns = access.owned_by(ctx.engine, cvd.id, sharing)  # held, not its own: copied
        stored = await heavy.run(
            intake.upload_blobs, ctx.store, items, intake.MAX_BUNDLE_RAW, limits.uploaded, owns
        )
        # Each blob hashed to its id, stored or already held: the device proved it holds
        # its content. The answer counts blobs new to this CVD, never whether another
        # CVD stored them.
        ids = [it.id for it in items]
        del items
    new = await heavy.run(_record, ctx, cvd.id, ids, stored, limits.recent, sharing)
    return BundleResponse(new=new)


def _record(
    ctx: ServerContext,
    cvd_id: str,
    ids: list[bytes],
    stored: intake.Intake,
    recent: RecentUploads,
    sharing: Sharing,
) -> int:
    """The bundle's blobs are the CVD's (``access.record``, under the CVD's own
    ``sharing``), and what it stored is remembered for the CVD's commit (``RecentUploads``)."""
    new = access.record(ctx.engine, cvd_id, ids, sharing, stored.first)
    recent.add(cvd_id, stored.epoch, stored.stored)
    return new


@router.post("/commit", summary="Commit a snapshot whose trees and chunks are uploaded")
async def commit(
    req: CommitRequest, ctx: Ctx, device: ActiveDevice, limits: Limits
) -> CommitResponse:
    return await limits.heavy.run(
        sync.commit_snapshot,
        ctx.engine,
        ctx.store,
        device,
        req,
        ctx.sharing,
        limits.uploaded,
        limits.pending,
        limits.recent,
    )


@router.get(
    "/work",
    summary="Claim the tasks queued for this device (restarted: requeue its cut-short ones first)",
)
async def work(ctx: Ctx, device: PresentedDevice, restarted: bool = False) -> list[WorkItem]:
    if isinstance(device, Principal) and device.role != fleet.ACTIVE:
        return []  # a pending device has no work: tasks are addressed to active CVDs
    # the credential, when this process does not know it, is checked by the claim's own
    # query, in its one worker thread (session 14)
    return await run_in_threadpool(tasks.claim_for_device, ctx.engine, device, _WORKER, restarted)


@router.post("/tasks/{task_id}", summary="Report progress or the end of a task")
async def report(task_id: str, rep: TaskReport, ctx: Ctx, device: PresentedDevice) -> TaskPublic:
    # async, the work in one worker thread (as ``config``), the credential's check too; a
    # running task's progress is answered from a read and written a moment later with
    # the others (``ctx.task_progress``)
    return await run_in_threadpool(_report, task_id, rep, ctx, device)


def _report(
    task_id: str, rep: TaskReport, ctx: ServerContext, who: Principal | Presented
) -> TaskPublic:
    device = require_active(users.verify_device(ctx.engine, who))
    return tasks.report(ctx.engine, device, task_id, rep, ctx.task_progress)


@router.get("/tasks/{task_id}", summary="One of this device's tasks (was a staged one cancelled?)")
def show_task(task_id: str, ctx: Ctx, device: Device) -> TaskPublic:
    return tasks.get_for_device(ctx.engine, device, task_id)
