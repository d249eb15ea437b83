"""Layer routes: capture, record, list, show, assign (with dry run), enforce, rule-set test."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.schemas import (
    AssignRequest,
    CaptureRequest,
    CvdLayersPublic,
    LayerPublic,
    PlanPublic,
    RecordingPublic,
    RecordRequest,
    RulesTestPublic,
    RulesTestRequest,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import layers

router = APIRouter()


@router.get("/layers", summary="List layers with their versions")
def list_layers(ctx: Ctx, caller: Caller) -> list[LayerPublic]:
    return layers.list_layers(ctx.engine, caller)


@router.get("/layers/{ref}", summary="Show a layer: versions, applications, whiteouts")
def show_layer(ref: str, ctx: Ctx, caller: Caller) -> LayerPublic:
    return layers.show_layer(ctx.engine, caller, ref)


@router.post(
    "/layers/capture",
    summary="Capture a base layer from a reference CVD's latest snapshot",
    status_code=201,
)
def capture(req: CaptureRequest, ctx: Ctx, caller: Caller) -> LayerPublic:
    return layers.capture(ctx.engine, ctx.store, caller, req.cvd, req.name, req.update, req.notes)


@router.post(
    "/layers/record/start",
    summary="Start recording an app layer on a reference endpoint",
    status_code=202,
)
def record_start(req: RecordRequest, ctx: Ctx, caller: Caller) -> RecordingPublic:
    return layers.record_start(ctx.engine, caller, req.device)


@router.post(
    "/layers/record/finalize",
    summary="Finish a recording; the app layer is captured at the agent's next snapshot",
    status_code=202,
)
def record_finalize(req: RecordRequest, ctx: Ctx, caller: Caller) -> RecordingPublic:
    return layers.record_finalize(ctx.engine, caller, req.device, req.name, req.update, req.notes)


@router.post(
    "/layers/record/cancel",
    summary="Stop a recording without capturing an app layer",
)
def record_cancel(req: RecordRequest, ctx: Ctx, caller: Caller) -> RecordingPublic:
    return layers.record_cancel(ctx.engine, caller, req.device)


@router.post(
    "/layers/assign",
    summary="Assign a base layer and app layers to CVDs, or only report what would change",
)
def assign(req: AssignRequest, ctx: Ctx, caller: Caller) -> list[PlanPublic]:
    return layers.assign(
        ctx.engine, ctx.store, caller, req.cvds, req.base, req.apps, req.dry_run, req.collection
    )


@router.post(
    "/cvds/{ref}/enforce", summary="Bring an endpoint back to its assigned layers", status_code=202
)
def enforce(ref: str, ctx: Ctx, caller: Caller, remove_user_apps: bool = False) -> PlanPublic:
    return layers.enforce(ctx.engine, ctx.store, caller, ref, remove_user_apps)


@router.get(
    "/cvds/{ref}/layers", summary="The layers a CVD is assigned and the ones its endpoint runs"
)
def cvd_layers(ref: str, ctx: Ctx, caller: Caller) -> CvdLayersPublic:
    return layers.show_cvd_layers(ctx.engine, caller, ref)


@router.post(
    "/layers/rules/test", summary="What a rule set would keep and drop from a CVD's latest snapshot"
)
def rules_test(req: RulesTestRequest, ctx: Ctx, caller: Caller) -> RulesTestPublic:
    return layers.test_rules(ctx.engine, ctx.store, caller, req.cvd, req.rules)
