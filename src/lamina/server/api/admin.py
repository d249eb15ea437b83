"""Admin routes: sessions, users, audit, tokens, devices, policies, tasks."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lamina.protocol.schemas import (
    ApiTokenCreate,
    AuditPublic,
    CentralizeRequest,
    CvdPublic,
    DevicePublic,
    LoginRequest,
    LoginResponse,
    MePublic,
    PasswordChange,
    PolicyCreate,
    PolicyPublic,
    PolicyUpdate,
    TaskPublic,
    TokenCreate,
    TokenInfo,
    TokenPublic,
    UserCreate,
    UserPublic,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import fleet, policies, tasks, users

router = APIRouter()


@router.post("/auth/login", summary="Log in with a password; returns an API token")
def login(req: LoginRequest, ctx: Ctx, request: Request) -> LoginResponse:
    client = request.client.host if request.client else "unknown"
    s = ctx.settings
    return users.login(ctx.engine, req.user, req.password, client, s.login_attempts, s.login_window)


@router.post("/auth/logout", summary="Revoke the session this call is made with", status_code=204)
def logout(ctx: Ctx, caller: Caller) -> None:
    users.logout(ctx.engine, caller)


@router.get("/auth/me", summary="Who the bearer token belongs to")
def me(caller: Caller) -> MePublic:
    return users.me(caller)


@router.post("/users", summary="Create a user with a role", status_code=201)
def create_user(req: UserCreate, ctx: Ctx, caller: Caller) -> UserPublic:
    return users.create_user(ctx.engine, caller, req)


@router.get("/users", summary="List users")
def list_users(ctx: Ctx, caller: Caller) -> list[UserPublic]:
    return users.list_users(ctx.engine, caller)


@router.post("/users/{name}/disable", summary="Disable a user: their sessions stop working at once")
def disable_user(name: str, ctx: Ctx, caller: Caller) -> UserPublic:
    return users.set_disabled(ctx.engine, caller, name, True)


@router.post("/users/{name}/enable", summary="Enable a disabled user")
def enable_user(name: str, ctx: Ctx, caller: Caller) -> UserPublic:
    return users.set_disabled(ctx.engine, caller, name, False)


@router.delete("/users/{name}", summary="Delete a user and revoke their tokens", status_code=204)
def delete_user(name: str, ctx: Ctx, caller: Caller) -> None:
    users.delete_user(ctx.engine, caller, name)


@router.put(
    "/users/{name}/password",
    summary="Change a password (one's own, or anyone's as an admin); revokes other sessions",
    status_code=204,
)
def set_password(name: str, req: PasswordChange, ctx: Ctx, caller: Caller) -> None:
    users.set_password(ctx.engine, caller, name, req)


@router.get("/audit", summary="The audit log, newest first")
def audit(ctx: Ctx, caller: Caller, limit: int = 200) -> list[AuditPublic]:
    return users.audit_entries(ctx.engine, caller, limit)


@router.post("/tokens", summary="Create an enrollment token", status_code=201)
def create_token(req: TokenCreate, ctx: Ctx, caller: Caller) -> TokenPublic:
    return fleet.create_token(ctx.engine, caller, req)


@router.post(
    "/auth/tokens", summary="Create a named API token acting as the caller", status_code=201
)
def create_api_token(req: ApiTokenCreate, ctx: Ctx, caller: Caller) -> LoginResponse:
    return users.create_api_token(ctx.engine, caller, req)


@router.get("/tokens", summary="List sessions, API tokens and enrollment tokens (no secrets)")
def list_tokens(ctx: Ctx, caller: Caller) -> list[TokenInfo]:
    return users.list_tokens(ctx.engine, caller)


@router.delete("/tokens/{token_id}", summary="Revoke a session, API token or enrollment token")
def revoke_token(token_id: str, ctx: Ctx, caller: Caller) -> TokenInfo:
    return users.revoke_token(ctx.engine, caller, token_id)


@router.get("/devices", summary="List devices (optionally only pending ones)")
def list_devices(ctx: Ctx, caller: Caller, pending: bool = False) -> list[DevicePublic]:
    return fleet.list_devices(ctx.engine, caller, pending)


@router.get("/devices/{ref}", summary="One device with its hardware facts")
def show_device(ref: str, ctx: Ctx, caller: Caller) -> DevicePublic:
    return fleet.show_device(ctx.engine, caller, ref)


@router.post("/devices/{ref}/reject", summary="Reject a pending device")
def reject_device(ref: str, ctx: Ctx, caller: Caller) -> DevicePublic:
    return fleet.reject(ctx.engine, caller, ref)


@router.post(
    "/devices/{ref}/revoke", summary="Revoke a device's credential: it stops working at once"
)
def revoke_device(ref: str, ctx: Ctx, caller: Caller) -> DevicePublic:
    return fleet.revoke(ctx.engine, caller, ref)


@router.post(
    "/devices/{ref}/centralize", summary="Create the CVD of a pending device", status_code=201
)
def centralize(ref: str, req: CentralizeRequest, ctx: Ctx, caller: Caller) -> CvdPublic:
    return fleet.centralize(ctx.engine, caller, ref, req)


@router.post("/policies", summary="Create a CVD policy", status_code=201)
def create_policy(req: PolicyCreate, ctx: Ctx, caller: Caller) -> PolicyPublic:
    return policies.create(ctx.engine, caller, req)


@router.get("/policies", summary="List CVD policies")
def list_policies(ctx: Ctx, caller: Caller) -> list[PolicyPublic]:
    return policies.list_policies(ctx.engine, caller)


@router.get("/policies/{ref}", summary="Show a CVD policy")
def show_policy(ref: str, ctx: Ctx, caller: Caller) -> PolicyPublic:
    return policies.show(ctx.engine, caller, ref)


@router.put("/policies/{ref}", summary="Change a policy; its CVDs move to the new version")
def update_policy(ref: str, req: PolicyUpdate, ctx: Ctx, caller: Caller) -> PolicyPublic:
    return policies.update_policy(ctx.engine, caller, ref, req)


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
