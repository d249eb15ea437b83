"""FastAPI dependencies: the server context, the caller, bounded request bodies."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool

from lamina.config import BUNDLE_MEMORY
from lamina.errors import AuthError, TooLargeError
from lamina.server.context import ServerContext
from lamina.server.limits import BodyBudget, HeavyWork
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
from lamina.server.services.recent_uploads import RecentUploads
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
    #: what each CVD's bundles stored since its last commit, for that commit's walk.
    recent: RecentUploads = field(default_factory=RecentUploads)
    #: commits answered "uploads pending", and the ids their walks stopped at.
    pending: PendingCommits = field(default_factory=PendingCommits)
    #: the worker threads of a sync's heavy requests (bundle, commit, missing).
    heavy: HeavyWork = field(default_factory=HeavyWork)
    #: the bytes of bundle bodies held in memory at once (``held_body``).
    bodies: BodyBudget = field(default_factory=lambda: BodyBudget(BUNDLE_MEMORY))


async def access_limits(request: Request) -> AccessLimits:
    state = request.app.state
    limits: AccessLimits | None = getattr(state, "access_limits", None)
    if limits is None:
        ctx: ServerContext = state.ctx
        limits = state.access_limits = AccessLimits(bodies=BodyBudget(ctx.settings.bundle_memory))
    return limits


Limits = Annotated[AccessLimits, Depends(access_limits)]


async def bounded_stream(
    request: Request, limit: int, what: str = "request body"
) -> AsyncIterator[bytes]:
    """The request body part by part, refusing more than ``limit`` bytes (a declared
    length above it before a byte is read)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"{what} of {declared} bytes is above the {limit}-byte limit")
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise TooLargeError(f"{what} is above the {limit}-byte limit")
        yield part


async def stream_body(
    request: Request, limit: int, sink: Callable[[bytes], object], what: str = "request body"
) -> int:
    """Hand the request body to ``sink`` part by part, refusing more than ``limit`` bytes
    (a declared length above it before a byte is read). Returns the bytes read."""
    size = 0
    async for part in bounded_stream(request, limit, what):
        size += len(part)
        sink(part)
    return size


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all."""
    chunks: list[bytes] = []
    await stream_body(request, limit, chunks.append)
    return b"".join(chunks)


#: Parts of a body waiting in a file are written a batch at a time, in a worker thread.
SPOOL_BATCH = 1024 * 1024


@asynccontextmanager
async def held_body(
    request: Request, limit: int, budget: BodyBudget, spool: Path
) -> AsyncIterator[bytes]:
    """The request body, in memory within ``budget`` for the block (refusing more than
    ``limit`` bytes). When the budget is spent the body is not left in the socket, where
    a slow sender would hold its share while it trickles in, nor read into memory past
    the budget: it goes to an unnamed file under ``spool`` as it arrives, and into
    memory once its weight fits, first come first served (docs/design.md, "Bundle
    bodies held in memory are bounded")."""
    declared = request.headers.get("content-length")
    weight = budget.weigh(int(declared) if declared and declared.isdigit() else limit)
    if budget.try_take(weight):
        try:
            yield await read_body(request, limit)
        finally:
            budget.give(weight)
        return
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=spool) as f:
        batch: list[bytes] = []
        size = batched = 0
        async for part in bounded_stream(request, limit):
            batch.append(part)
            batched += len(part)
            if batched >= SPOOL_BATCH:
                await anyio.to_thread.run_sync(f.writelines, batch)
                size += batched
                batch, batched = [], 0
        await anyio.to_thread.run_sync(f.writelines, batch)
        size += batched
        del batch
        async with budget.hold(budget.weigh(size)):
            f.seek(0)
            yield await anyio.to_thread.run_sync(f.read)


def intake_dir(data: Path) -> Path:
    """Where bundle bodies past the memory budget wait (unnamed files: none outlives its
    request, even when the server is killed)."""
    return data / "intake"
