"""Operations routes: the fleet's health (the console dashboard's, for the CLI), events,
and the Prometheus metrics."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import BaseModel

from lamina.errors import AuthError, NotFoundError
from lamina.server.deps import Caller, Ctx, principal
from lamina.server.metrics import CONTENT_TYPE_LATEST, METRICS_PERMISSION, Metrics, is_loopback
from lamina.server.services import dashboard, events

router = APIRouter()
metrics_router = APIRouter()


class StoreUsagePublic(BaseModel):
    pack_bytes: int
    logical_bytes: int
    snapshots: int
    growth_7d: int
    reduction: float


class StatusPublic(BaseModel):
    #: Devices by health: pending, online, offline, failing, lowdisk.
    counts: dict[str, int]
    total: int
    usage: StoreUsagePublic | None
    #: Unacknowledged events by severity.
    events: dict[str, int]


class FleetDevicePublic(BaseModel):
    id: str
    hostname: str
    status: str
    health: list[str]
    policy: str | None
    cvd_id: str | None
    cvd_name: str | None
    last_sync: dt.datetime | None
    last_seen: dt.datetime | None
    layers: list[str]
    agent_version: str
    disk_free: int | None
    vendor: str
    model: str
    os: str


class FleetPage(BaseModel):
    rows: list[FleetDevicePublic]
    total: int
    page: int
    pages: int


class EventPublic(BaseModel):
    id: int
    time: dt.datetime | None
    severity: str
    source: str
    target: str
    message: str
    acknowledged_by: str | None
    acknowledged: dt.datetime | None


class AckPublic(BaseModel):
    id: int
    acknowledged_by: str


@router.get("/status", summary="The fleet's health counts, the store's usage, open events")
def status(ctx: Ctx, caller: Caller) -> StatusPublic:
    s = dashboard.summary(ctx.engine, caller)
    u = s.usage
    return StatusPublic(
        counts=s.counts,
        total=s.total,
        usage=StoreUsagePublic(
            pack_bytes=u.pack_bytes,
            logical_bytes=u.logical_bytes,
            snapshots=u.snapshots,
            growth_7d=u.growth_7d,
            reduction=u.reduction,
        )
        if u
        else None,
        events=events.unacknowledged(ctx.engine, caller),
    )


@router.get("/fleet", summary="A page of devices with health, policy, last sync, layers")
def fleet(
    ctx: Ctx,
    caller: Caller,
    state: Annotated[str, Query(max_length=16)] = "",
    search: Annotated[str, Query(max_length=255)] = "",
    sort: Annotated[str, Query(max_length=16)] = "hostname",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    size: Annotated[int, Query(ge=1, le=dashboard.MAX_PAGE)] = dashboard.MAX_PAGE,
) -> FleetPage:
    q = dashboard.DeviceQuery(search=search, health=state, sort=sort, page=page, size=size)
    p = dashboard.device_page(ctx.engine, caller, q)
    return FleetPage(
        rows=[
            FleetDevicePublic(
                id=r.id,
                hostname=r.hostname,
                status=r.status,
                health=r.health,
                policy=r.policy,
                cvd_id=r.cvd_id,
                cvd_name=r.cvd_name,
                last_sync=r.last_sync,
                last_seen=r.last_seen,
                layers=r.layers,
                agent_version=r.agent_version,
                disk_free=r.disk_free,
                vendor=r.vendor,
                model=r.model,
                os=r.os,
            )
            for r in p.rows
        ],
        total=p.total,
        page=q.page,
        pages=p.pages,
    )


@router.get("/events", summary="Events, newest first (pending: only unacknowledged ones)")
def list_events(
    ctx: Ctx,
    caller: Caller,
    pending: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EventPublic]:
    return [EventPublic(**vars(e)) for e in events.list_events(ctx.engine, caller, pending, limit)]


@router.post("/events/{event_id}/ack", summary="Acknowledge an event")
def ack_event(
    event_id: Annotated[int, Path(ge=1, le=2**63 - 1)], ctx: Ctx, caller: Caller
) -> AckPublic:
    events.acknowledge(ctx.engine, caller, event_id)
    return AckPublic(id=event_id, acknowledged_by=caller.name)


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics (loopback without a token by default; elsewhere metrics.read)",
    response_class=Response,
    # Prometheus text, not the JSON API: kept out of the OpenAPI document.
    include_in_schema=False,
)
def metrics(ctx: Ctx, request: Request, authorization: str | None = Header(None)) -> Response:
    mode = ctx.settings.metrics
    if mode == "off":
        raise NotFoundError("metrics are turned off on this server")
    client = request.client.host if request.client else None
    if mode == "token" or (mode == "loopback" and not is_loopback(client)):
        if not authorization:
            raise AuthError("metrics from another host need an administrator's token")
        principal(ctx, authorization).require(METRICS_PERMISSION)
    m: Metrics = request.app.state.metrics
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)
