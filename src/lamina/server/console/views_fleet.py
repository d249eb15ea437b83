"""Log in and out, the dashboard, the device list, centralize and reject."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Response

from lamina.errors import AuthError, LaminaError
from lamina.protocol.schemas import CentralizeRequest
from lamina.server.console.forms import Check, Chosen
from lamina.server.console.web import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Actor,
    ConsoleRoute,
    Ctx,
    confirm_page,
    new_login_csrf,
    render,
    see_other,
    session_actor,
    set_cookie,
)
from lamina.server.services import dashboard, events, fleet, policies, tasks, users
from lamina.server.services.users import SESSION_LIFETIME

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


def _login_page(request: Request, status: int = 200, message: str = "") -> Response:
    token = new_login_csrf()
    resp = render(
        request, "login.html", None, status_code=status, login_csrf=token, message=message
    )
    set_cookie(request, resp, LOGIN_CSRF_COOKIE, token, 3600)
    return resp


@router.get("/")
def home(request: Request, ctx: Ctx) -> Response:
    try:
        actor = session_actor(request, ctx)
    except AuthError:
        return _login_page(request)
    # Loaded (or reloaded after an action): counted now. Only the page's own refresh
    # below takes counts a few seconds old.
    return render(request, "dashboard.html", actor, **_dashboard(ctx, actor, max_age=0))


def _dashboard(
    ctx: Ctx, actor: Actor, usage: bool = True, max_age: float = dashboard.SUMMARY_MAX_AGE
) -> dict[str, Any]:
    return {
        "summary": dashboard.recent_summary(ctx.engine, actor, usage, max_age),
        "running": tasks.list_tasks(ctx.engine, actor, state=tasks.RUNNING, limit=20),
        "queued": tasks.list_tasks(ctx.engine, actor, state=tasks.QUEUED, limit=20),
        "event_counts": events.unacknowledged(ctx.engine, actor),
        "events": events.list_events(ctx.engine, actor, pending_only=True, limit=10),
    }


@router.get("/dashboard/live")
def dashboard_live(request: Request, ctx: Ctx, actor: Actor) -> Response:
    """The part of the dashboard htmx reloads every few seconds (store usage is not in it)."""
    return render(request, "_dashboard_live.html", actor, **_dashboard(ctx, actor, usage=False))


@router.post("/login")
def login(
    request: Request,
    ctx: Ctx,
    user: Annotated[str, Form(max_length=128)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    if not user or not password:
        return _login_page(request, 400, "Enter your user name and password.")
    client = request.client.host if request.client else "unknown"
    s = ctx.settings
    try:
        session = users.login(ctx.engine, user, password, client, s.login_attempts, s.login_window)
    except LaminaError as e:
        return _login_page(request, e.http_status, e.message)
    resp = see_other("/")
    set_cookie(request, resp, SESSION_COOKIE, session.token, int(SESSION_LIFETIME.total_seconds()))
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return resp


@router.post("/logout")
def logout(request: Request, ctx: Ctx) -> Response:
    with contextlib.suppress(AuthError):  # an expired or revoked session is gone already
        users.logout(ctx.engine, session_actor(request, ctx))
    resp = see_other("/")
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@dataclass(frozen=True)
class DeviceSearch:
    """The device list's query string: a search, a health state, the sort column and its
    order (``asc`` or ``desc``), the page and its size."""

    q: str = ""
    state: str = ""
    sort: str = "hostname"
    order: str = "asc"
    page: int = 1
    size: int = 50

    def query(self) -> dashboard.DeviceQuery:
        desc = self.order == "desc"
        return dashboard.DeviceQuery(
            self.q.strip(), self.state, self.sort, desc, self.page, self.size
        )


@router.get("/devices")
def device_list(
    request: Request, ctx: Ctx, actor: Actor, search: Annotated[DeviceSearch, Depends()]
) -> Response:
    result = dashboard.device_page(ctx.engine, actor, search.query())
    return render(request, "devices.html", actor, result=result, health=dashboard.HEALTH)


def _pending_device(ctx: Ctx, actor: Actor, device_id: str) -> dashboard.DeviceFacts:
    """The pending device a form acts on (``device.write`` asked first)."""
    actor.require("device.write")
    return dashboard.pending_device(ctx.engine, actor, device_id)


#: The pending device of the path, for the pages that centralize or reject it.
Pending = Annotated[dashboard.DeviceFacts, Depends(_pending_device)]


def pending_form(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    template: str,
    device: dashboard.DeviceFacts,
    **values: Any,
) -> Response:
    """A form that puts a pending ``device`` under a policy (centralize, provision): the
    device's facts and the policies to choose from, with the form's other ``values``."""
    cvd_policies = policies.list_policies(ctx.engine, actor)
    return render(request, template, actor, device=device, policies=cvd_policies, **values)


@router.get("/devices/{device_id}/centralize")
def centralize_form(request: Request, ctx: Ctx, actor: Actor, device: Pending) -> Response:
    return pending_form(request, ctx, actor, "centralize.html", device)


@router.post("/devices/{device_id}/centralize")
def centralize(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    device_id: str,
    policy: Chosen,
    reference: Check = "",
) -> Response:
    cvd = fleet.centralize(
        ctx.engine, actor, device_id, CentralizeRequest(policy=policy, reference=bool(reference))
    )
    return see_other(f"/cvds/{cvd.id}")


@router.get("/devices/{device_id}/reject")
def reject_form(request: Request, actor: Actor, device: Pending) -> Response:
    return confirm_page(
        request,
        actor,
        title=f"Reject {device.hostname}",
        what=(
            f"The device {device.hostname} will be refused: its agent's credential stops "
            "working and it never gets a CVD. Enroll it again to change your mind."
        ),
        action=f"/devices/{device.id}/reject",
        button="Reject",
        back="/devices?state=pending",
    )


@router.post("/devices/{device_id}/reject")
def reject(ctx: Ctx, actor: Actor, device_id: str) -> Response:
    fleet.reject(ctx.engine, actor, device_id)
    return see_other("/devices?state=pending")


@router.get("/events")
def event_list(request: Request, ctx: Ctx, actor: Actor, pending: str = "") -> Response:
    return render(
        request,
        "events.html",
        actor,
        events=events.list_events(ctx.engine, actor, pending_only=bool(pending)),
        pending=bool(pending),
    )


@router.post("/events/{event_id}/acknowledge")
def event_acknowledge(
    request: Request, ctx: Ctx, actor: Actor, event_id: int, back: Annotated[str, Form()] = "/"
) -> Response:
    events.acknowledge(ctx.engine, actor, event_id)
    return see_other(back if back in ("/", "/events", "/events?pending=1") else "/")
