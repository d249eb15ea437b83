"""FastAPI dependencies: the server context, the caller, bounded request bodies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from lamina.errors import AuthError, TooLargeError
from lamina.server.context import ServerContext
from lamina.server.security import Principal
from lamina.server.services.users import authenticate


def context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(context)]


def principal(ctx: Ctx, authorization: Annotated[str | None, Header()] = None) -> Principal:
    if not authorization or not authorization.startswith("Bearer "):
        raise AuthError("log in first: missing bearer token")
    return authenticate(ctx.engine, authorization.removeprefix("Bearer ").strip())


Caller = Annotated[Principal, Depends(principal)]


def device(caller: Caller) -> Principal:
    if caller.kind != "device":
        raise AuthError("this endpoint is for enrolled agents (device credential)")
    return caller


Device = Annotated[Principal, Depends(device)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"request body of {declared} bytes is above the {limit}-byte limit")
    chunks = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise TooLargeError(f"request body is above the {limit}-byte limit")
        chunks.append(part)
    return b"".join(chunks)
