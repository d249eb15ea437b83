"""FastAPI dependencies: the server context, the caller, bounded request bodies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool

from lamina.errors import AuthError, TooLargeError
from lamina.server.context import ServerContext
from lamina.server.limits import HeavyWork
from lamina.server.security import (
    DEVICE_TOKEN,
    Principal,
    RateLimiter,
    require_active,
    token_hash,
)
from lamina.server.services.access import TreeCache
from lamina.server.services.credentials import Presented
from lamina.server.services.inflight import PendingCommits
from lamina.server.services.sync import DecodedTrees
from lamina.server.services.users import authenticate

# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` one in a
# worker thread, a hop that cost more CPU (~0.15 ms) than the check itself, four times
# per device request. ``principal`` reads the database in a thread, unless the caller's
# device credential is one this process verified already (``services/credentials.py``).


async def context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(context)]


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header, or AuthError."""
    if not authorization or not authorization.startswith("Bearer "):
        raise AuthError("log in first: missing bearer token")
    return authorization.removeprefix("Bearer ").strip()


async def principal(ctx: Ctx, authorization: Annotated[str | None, Header()] = None) -> Principal:
    token = bearer_token(authorization)
    if token.startswith(DEVICE_TOKEN):
        known = ctx.credentials.get(token_hash(token))
        if known is not None:
            return known
    return await run_in_threadpool(authenticate, ctx.engine, token, ctx.credentials)


Caller = Annotated[Principal, Depends(principal)]


async def device(caller: Caller) -> Principal:
    if caller.kind != "device":
        raise AuthError("this endpoint is for enrolled agents (device credential)")
    return caller


Device = Annotated[Principal, Depends(device)]


async def active_device(caller: Device) -> Principal:
    return require_active(caller)


ActiveDevice = Annotated[Principal, Depends(active_device)]


async def presented_device(
    ctx: Ctx, authorization: Annotated[str | None, Header()] = None
) -> Principal | Presented:
    """The device credential of a poll route, checked in the worker thread that serves
    the request (``users.verify_device``; ``/agent/config`` by its own query), not in a
    thread of its own: one thread hop a poll, not two (docs/design.md, "Polls under load
    (session 14)"). A credential this process verified already is its ``Principal``."""
    token = bearer_token(authorization)
    if not token.startswith(DEVICE_TOKEN):
        raise AuthError("this endpoint is for enrolled agents (device credential)")
    h = token_hash(token)
    known = ctx.credentials.get(h)
    return known if known is not None else Presented(h, ctx.credentials)


PresentedDevice = Annotated[Principal | Presented, Depends(presented_device)]


@dataclass
class AccessLimits:
    """Per-process state of the device routes: rate limits and delivered-tree cache."""

    # Generous: a device learns only about its own CVD's blobs anyway (services.access);
    # these bound how fast one device can make the server work. A first sync or a full
    # restore of a large endpoint fits the burst; a refused agent retries next cycle.
    #: ids asked of ``/agent/missing``.
    missing: RateLimiter = field(
        default_factory=lambda: RateLimiter(50_000, 5_000_000, "blob ids asked")
    )
    #: blobs read through ``/blobs/read`` by devices.
    reads: RateLimiter = field(default_factory=lambda: RateLimiter(50_000, 5_000_000, "blob reads"))
    trees: TreeCache = field(default_factory=TreeCache)
    #: trees decoded when uploaded, for the commit that names them.
    uploaded: DecodedTrees = field(default_factory=DecodedTrees)
    #: commits answered "uploads pending", and the ids their walks stopped at.
    pending: PendingCommits = field(default_factory=PendingCommits)
    #: the worker threads of a sync's heavy requests (bundle, commit, missing).
    heavy: HeavyWork = field(default_factory=HeavyWork)


async def access_limits(request: Request) -> AccessLimits:
    state = request.app.state
    limits: AccessLimits | None = getattr(state, "access_limits", None)
    if limits is None:
        limits = state.access_limits = AccessLimits()
    return limits


Limits = Annotated[AccessLimits, Depends(access_limits)]


async def stream_body(
    request: Request, limit: int, sink: Callable[[bytes], object], what: str = "request body"
) -> int:
    """Hand the request body to ``sink`` part by part, refusing more than ``limit`` bytes
    (a declared length above it before a byte is read). Returns the bytes read."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"{what} of {declared} bytes is above the {limit}-byte limit")
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise TooLargeError(f"{what} is above the {limit}-byte limit")
        sink(part)
    return size


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all."""
    chunks: list[bytes] = []
    await stream_body(request, limit, chunks.append)
    return b"".join(chunks)
