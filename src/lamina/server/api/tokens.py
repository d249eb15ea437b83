"""Token routes: enrollment tokens, named API tokens, and the list and revocation of every
kind of token (sessions too)."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.schemas import (
    ApiTokenCreate,
    LoginResponse,
    TokenCreate,
    TokenInfo,
    TokenPublic,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import fleet, users

router = APIRouter()


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
