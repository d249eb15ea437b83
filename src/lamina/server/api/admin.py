"""Account routes: log in and out, who the caller is, users, the audit log.

The other resources have a module each: ``tokens``, ``devices``, ``policies``, ``tasks``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lamina.protocol.schemas import (
    AuditPublic,
    LoginRequest,
    LoginResponse,
    MePublic,
    PasswordChange,
    UserCreate,
    UserPublic,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import users

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
    return MePublic(
        id=caller.id,
        name=caller.name,
        kind=caller.kind,
        role=caller.role,
        permissions=sorted(caller.permissions),
    )


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
