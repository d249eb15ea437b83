"""Operations routes: the fleet's health (the console dashboard's, for the CLI), events,
and the Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response

from lamina.errors import AuthError, NotFoundError
from lamina.protocol.ops import (
    AckPublic,
    EventPublic,
    FleetDevicePublic,
    FleetPage,
    StatusPublic,
    StoreUsagePublic,
)
from lamina.server.deps import Caller, Ctx, bearer_token
from lamina.server.metrics import CONTENT_TYPE_LATEST, METRICS_PERMISSION, Metrics, is_loopback
from lamina.server.services import dashboard, events
from lamina.server.services.users import authenticate

router = APIRouter()
metrics_router = APIRouter()


@router.get("/status", summary="The fleet's health counts, the store's usage, open events")
def status(ctx: Ctx, caller: Caller) -> StatusPublic:
    s = dashboard.summary(ctx.engine, caller)
    u = s.usage
    return StatusPublic(
        counts=s.counts,
        total=s.total,
        usage=StoreUsagePublic.model_validate(u, from_attributes=True) if u else None,
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
        rows=[FleetDevicePublic.model_validate(r, from_attributes=True) for r in p.rows],
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
    return events.list_events(ctx.engine, caller, pending, limit)


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
        authenticate(ctx.engine, bearer_token(authorization)).require(METRICS_PERMISSION)
    m: Metrics = request.app.state.metrics
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)
