"""Tasks, layers, policies, collections, rule test, audit log, users and enrollment tokens."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request, Response
from sqlalchemy import Engine

from lamina.errors import AuthError, ForbiddenError, NotFoundError, UsageError
from lamina.protocol.schemas import (
    ApiTokenCreate,
    PasswordChange,
    PolicyCreate,
    PolicySettings,
    PolicyUpdate,
    TokenCreate,
    UserCreate,
)
from lamina.server.console import views_cvd, web
from lamina.server.console.forms import Check, Chosen, Name, Names, Notes, Password, Text, lines
from lamina.server.console.web import Actor, ConsoleRoute, Ctx, add_page, render, see_other
from lamina.server.services import collections, journal, layers, policies, tasks, users
from lamina.server.services import fleet as fleet_service

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
AUDIT_PAGE = 100
TASK_STATES = ("queued", "running", "waiting", "done", "failed", "cancelled")


# --- tasks ---------------------------------------------------------------------------
def _tasks(ctx: Ctx, actor: Actor, state: str) -> dict[str, Any]:
    if state and state not in TASK_STATES:
        raise UsageError(f"unknown task state {state!r}")
    return {
        "tasks": tasks.list_tasks(ctx.engine, actor, state or None, limit=100),
        "state": state,
        "states": TASK_STATES,
    }


@router.get("/tasks")
def task_list(request: Request, ctx: Ctx, actor: Actor, state: str = "") -> Response:
    return render(request, "tasks.html", actor, **_tasks(ctx, actor, state))


@router.get("/tasks/live")
def task_list_live(request: Request, ctx: Ctx, actor: Actor, state: str = "") -> Response:
    return render(request, "_tasks_live.html", actor, **_tasks(ctx, actor, state))


@router.get("/tasks/{task_id}")
def task_page(request: Request, ctx: Ctx, actor: Actor, task_id: str) -> Response:
    return render(request, "task.html", actor, task=tasks.get(ctx.engine, actor, task_id))


@router.post("/tasks/{task_id}/cancel")
def task_cancel(ctx: Ctx, actor: Actor, task_id: str) -> Response:
    t = tasks.cancel(ctx.engine, actor, task_id)
    return see_other(f"/tasks/{t.id}")


@router.get("/tasks/{task_id}/live")
def task_live(request: Request, ctx: Ctx, actor: Actor, task_id: str) -> Response:
    return render(request, "_task_live.html", actor, task=tasks.get(ctx.engine, actor, task_id))


# --- layers --------------------------------------------------------------------------
add_page(router, "/layers", "layers.html", layers=layers.list_layers)
add_page(router, "/layers/{ref}", "layer.html", layer=layers.show_layer)


@dataclass(frozen=True)
class LayerFields:
    """The capture and finalize forms: the reference CVD, then the new layer's name or
    the layer it is a new version of (neither: the service's default name), and notes."""

    cvd: str
    name: str | None
    update: str | None
    notes: str


def _layer_fields(
    cvd: Chosen, name: Text = "", update: Text = "", notes: Notes = ""
) -> LayerFields:
    return LayerFields(cvd, name.strip() or None, update.strip() or None, notes)


LayerForm = Annotated[LayerFields, Depends(_layer_fields)]


@router.post("/layers/capture")
@router.post("/layers/record/finalize")
def layer_capture(request: Request, ctx: Ctx, actor: Actor, f: LayerForm) -> Response:
    """A base layer captured from a reference CVD, or an app layer from its recording."""
    if request.url.path.endswith("/finalize"):
        layers.record_finalize(ctx.engine, actor, f.cvd, f.name, f.update, f.notes)
        return see_other("/layers")
    out = layers.capture(ctx.engine, ctx.store, actor, f.cvd, f.name, f.update, f.notes)
    return see_other(f"/layers/{out.id}")


@router.post("/layers/record/start")
def layer_record_start(ctx: Ctx, actor: Actor, cvd: Chosen) -> Response:
    layers.record_start(ctx.engine, actor, cvd)
    return see_other("/layers")


@router.post("/layers/record/cancel")
def layer_record_cancel(ctx: Ctx, actor: Actor, cvd: Chosen) -> Response:
    layers.record_cancel(ctx.engine, actor, cvd)
    return see_other("/layers")


@router.get("/layers/assign/collection")
def collection_assign_form(request: Request, ctx: Ctx, actor: Actor) -> Response:
    actor.require("layer.write")
    return render(
        request,
        "assign_collection.html",
        actor,
        choices=views_cvd.choices(ctx, actor),
        collections=collections.list_collections(ctx.engine, actor),
    )


@router.post("/layers/assign/collection/preview")
@router.post("/layers/assign/collection")
def collection_assign(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    collection: Chosen,
    base: Text = "",
    apps: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """The dry run (``…/preview``): its table and the form that assigns it; then the
    assignment, with the same table."""
    dry_run = request.url.path.endswith("/preview")
    plans, chosen = views_cvd.assign_plans(ctx, actor, [], base, apps, dry_run, collection)
    target = f"collection {collection}"
    if not dry_run:
        return views_cvd.plan_page(request, actor, target, plans, base, chosen)
    here = "/layers/assign/collection"
    hidden = {"collection": collection}
    return views_cvd.plan_page(request, actor, target, plans, base, chosen, here, here, hidden)


@router.get("/rules")
def rules_page(request: Request, ctx: Ctx, actor: Actor, cvd: str = "") -> Response:
    result = layers.test_rules(ctx.engine, ctx.store, actor, cvd, None) if cvd else None
    return render(request, "rules.html", actor, result=result, cvd=cvd)


# --- policies ------------------------------------------------------------------------
def _settings(
    interval: Annotated[int, Form()] = 3600,
    keep_last: Annotated[int, Form()] = 3,
    include: Text = "/**",
    exclude: Text = "",
) -> PolicySettings:
    """The policy form's fields (``_policy_fields.html``, new or edited), as settings."""
    return PolicySettings(
        interval=interval,
        keep_last=keep_last,
        include=[x.strip() for x in include.splitlines() if x.strip()] or ["/**"],
        exclude=[x.strip() for x in exclude.splitlines() if x.strip()],
    )


SettingsForm = Annotated[PolicySettings, Depends(_settings)]

add_page(router, "/policies", "policies.html", policies=policies.list_policies)


@router.post("/policies")
def policy_create(ctx: Ctx, actor: Actor, name: Name, settings: SettingsForm) -> Response:
    req = PolicyCreate(name=name, settings=settings)
    policies.create(ctx.engine, actor, req)
    return see_other("/policies")


add_page(router, "/policies/{ref}", "policy.html", policy=policies.show)


@router.post("/policies/{ref}")
def policy_update(ctx: Ctx, actor: Actor, ref: str, new: SettingsForm) -> Response:
    """The form's settings over the policy's others (those the form does not show)."""
    current = policies.show(ctx.engine, actor, ref).settings
    merged = current.model_copy(
        update={k: getattr(new, k) for k in ("interval", "keep_last", "include", "exclude")}
    )
    p = policies.update_policy(ctx.engine, actor, ref, PolicyUpdate(settings=merged))
    return see_other(f"/policies/{p.id}")


# --- collections ---------------------------------------------------------------------
add_page(router, "/collections", "collections.html", collections=collections.list_collections)


@router.post("/collections")
def collection_create(
    ctx: Ctx,
    actor: Actor,
    name: Name,
    filter: Annotated[str, Form(max_length=2000)] = "",
    members: Names = "",
) -> Response:
    collections.create(ctx.engine, actor, name, filter.strip(), lines(members))
    return see_other("/collections")


# --- audit ---------------------------------------------------------------------------
def _day(v: str) -> dt.datetime | None:
    if not v:
        return None
    try:
        return dt.datetime.fromisoformat(v).replace(tzinfo=dt.UTC)
    except ValueError as e:
        raise UsageError(f"{v!r} is not a date (YYYY-MM-DD)") from e


@dataclass(frozen=True)
class AuditSearch:
    """The audit page's search (its query): who, which action (``*`` matches any
    characters), from and to which day (both included, ``YYYY-MM-DD``)."""

    user: str = ""
    action: str = ""
    since: str = ""
    until: str = ""


@router.get("/audit")
def audit_page(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    search: Annotated[AuditSearch, Depends()],
    before: int | None = None,
) -> Response:
    end = _day(search.until)
    entries = journal.search(
        ctx.engine,
        actor,
        search.user.strip(),
        search.action.strip(),
        _day(search.since),
        end + dt.timedelta(days=1) if end else None,
        before_id=before,
        limit=AUDIT_PAGE,
    )
    # The next page: the same search, before the last entry shown.
    full = len(entries) == AUDIT_PAGE
    older = urlencode({**asdict(search), "before": entries[-1].id}) if full else None
    return render(request, "audit.html", actor, entries=entries, older=older, **asdict(search))


# --- users and tokens ----------------------------------------------------------------
add_page(router, "/users", "users.html", users=users.list_users)


@router.post("/users")
def user_create(ctx: Ctx, actor: Actor, name: Name, password: Password, role: Text) -> Response:
    users.create_user(
        ctx.engine,
        actor,
        UserCreate.model_validate({"name": name, "password": password, "role": role}),
    )
    return see_other("/users")


@router.post("/users/{name}/disable")
def user_disable(ctx: Ctx, actor: Actor, name: str) -> Response:
    users.set_disabled(ctx.engine, actor, name, True)
    return see_other("/users")


@router.post("/users/{name}/enable")
def user_enable(ctx: Ctx, actor: Actor, name: str) -> Response:
    users.set_disabled(ctx.engine, actor, name, False)
    return see_other("/users")


def _user(engine: Engine, actor: Actor, name: str) -> dict[str, str]:
    """A user to delete, by name (the service says whether it exists only to ``user.admin``)."""
    if name not in {u.name for u in users.list_users(engine, actor)}:
        raise NotFoundError(f"no user {name!r}")
    return {"name": name}


web.add_deletion(
    router,
    web.Deletion(
        "/users", "user", "user.admin", _user, users.delete_user,
        "The user {name} is deleted with every session and API token of theirs: they stop "
        "working at once. The audit log keeps what they did.",
        "/users", key="name", back_to_page=False,
    ),
)  # fmt: skip


@router.post("/users/{name}/password")
def user_password(
    ctx: Ctx,
    actor: Actor,
    name: str,
    password: Password,
    current: Annotated[str | None, Form(max_length=1024)] = None,
) -> Response:
    # one's own password needs the current one, administrators' too (``users.set_password``)
    try:
        users.set_password(
            ctx.engine, actor, name, PasswordChange(password=password, current=current or None)
        )
    except ForbiddenError:
        raise
    except AuthError as e:  # a wrong current password: said on the page, not a logout
        raise UsageError(e.message) from e
    return see_other("/users")


def _token_page(
    request: Request, ctx: Ctx, actor: Actor, created: Any = None, api_token: Any = None
) -> Response:
    return render(
        request,
        "tokens.html",
        actor,
        tokens=users.list_tokens(ctx.engine, actor),
        policies=policies.list_policies(ctx.engine, actor)
        if "device.write" in actor.permissions
        else [],
        created=created,
        api_token=api_token,
    )


@router.get("/tokens")
def token_page(request: Request, ctx: Ctx, actor: Actor) -> Response:
    return _token_page(request, ctx, actor)


@router.post("/tokens")
def token_create(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    hours: Annotated[int, Form(ge=1, le=366 * 24)] = 24,
    uses: Annotated[int, Form(ge=1, le=100000)] = 1,
    policy: Text = "",
    reference: Check = "",
) -> Response:
    token = fleet_service.create_token(
        ctx.engine,
        actor,
        TokenCreate(
            expires_in=hours * 3600, policy=policy or None, reference=bool(reference), uses=uses
        ),
    )
    return _token_page(request, ctx, actor, created=token)


@router.post("/tokens/api")
def api_token_create(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    name: Name,
    days: Annotated[int, Form(ge=1, le=366)] = 90,
) -> Response:
    """``lamina token api``: a token for scripts acting as the logged-in user, shown once."""
    req = ApiTokenCreate(name=name.strip(), expires_in=days * 86400)
    made = users.create_api_token(ctx.engine, actor, req)
    return _token_page(request, ctx, actor, api_token=made)


@router.post("/tokens/{token_id}/revoke")
def token_revoke(ctx: Ctx, actor: Actor, token_id: str) -> Response:
    users.revoke_token(ctx.engine, actor, token_id)
    return see_other("/tokens")
