"""Layer routes: capture, record, list, show, assign (with dry run), enforce."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from lamina.protocol.schemas import Strict
from lamina.server.deps import Caller, Ctx
from lamina.server.services import fleet, layers

router = APIRouter()


class CaptureRequest(Strict):
    cvd: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    update: str | None = None
    notes: str = Field("", max_length=4000)


class RecordRequest(Strict):
    device: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    update: str | None = None
    notes: str = Field("", max_length=4000)


class AssignRequest(Strict):
    cvds: list[str] = Field(min_length=1, max_length=10000)
    base: str | None = None
    apps: list[str] = Field(default_factory=list, max_length=100)
    dry_run: bool = False


@router.get("/layers", summary="List layers with their versions")
def list_layers(ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    return layers.list_layers(ctx.engine, caller)


@router.get("/layers/{ref}", summary="Show a layer: versions, applications, whiteouts")
def show_layer(ref: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return layers.show_layer(ctx.engine, caller, ref)


@router.post("/layers/capture", summary="Capture a base layer from a reference CVD's latest snapshot", status_code=201)
def capture(req: CaptureRequest, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return layers.capture(ctx.engine, ctx.store, caller, req.cvd, req.name, req.update, req.notes)


@router.post("/layers/record/start", summary="Start recording an app layer on a reference endpoint", status_code=202)
def record_start(req: RecordRequest, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return layers.record_start(ctx.engine, caller, req.device)


@router.post("/layers/record/finalize", summary="Finish a recording; the app layer is captured at the agent's next snapshot", status_code=202)
def record_finalize(req: RecordRequest, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return layers.record_finalize(ctx.engine, caller, req.device, req.name, req.update, req.notes)


@router.post("/layers/assign", summary="Assign a base layer and app layers to CVDs, or only report what would change")
def assign(req: AssignRequest, ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    return layers.assign(ctx.engine, ctx.store, caller, req.cvds, req.base, req.apps, req.dry_run)


@router.post("/cvds/{ref}/enforce", summary="Bring an endpoint back to its assigned layers", status_code=202)
def enforce(ref: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return layers.enforce(ctx.engine, ctx.store, caller, ref)


@router.get("/cvds/{ref}/layers", summary="The layers a CVD is assigned and the ones its endpoint runs")
def cvd_layers(ref: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    cvd = fleet.cvd_for_access(ctx.engine, caller, ref)
    return {"id": cvd.id, **layers.cvd_layer_state(ctx.engine, cvd.id)}
