"""Limits on what a request may take: its body's size, and the worker threads of heavy ones.

``BodyLimit``, an ASGI middleware for every route, applied before any route (or
authentication) runs: a declared ``Content-Length`` above the route's limit is
answered 413 at once, without reading the body; a streamed (chunked) body is
counted as it arrives, and the request is answered 413 as soon as the count
passes the limit -- the rest is never read. Routes keep their own checks (the
bundle route's ``held_body``); this is the floor under all of them.

``BodyBudget``: the bytes of bundle bodies the server holds in memory at once; a body
that arrives past it is written to a file while it arrives and read in once there is
room (``deps.held_body``).

``HeavyWork``: the worker threads a sync's heavy requests (bundle, commit, missing) may
hold at once. Every other request (an agent's poll, a console page) runs in anyio's
default pool of 40 threads, which heavy requests then never fill; and only a few heavy
requests compete with a poll for the interpreter's lock (docs/design.md, "Polls under
load").
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina.errors import TooLargeError, UsageError


class _Refused(Exception):
    """Raised into the application from ``receive`` once the 413 answer has been sent."""


class BodyLimit:
    """Refuse request bodies above ``default`` bytes, or above ``per_path[path]`` for a path."""

    def __init__(self, app: ASGIApp, default: int, per_path: Mapping[str, int]) -> None:
        self.app = app
        self.default = default
        self.per_path = dict(per_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        declared = _content_length(scope)
        if declared is not None and not declared.isdigit():
            await _answer(send, UsageError(f"Content-Length {declared[:40]!r} is not a number"))
            return
        if declared is not None and int(declared) > limit:
            await _answer(
                send,
                TooLargeError(f"request body of {declared} bytes is above the {limit}-byte limit"),
            )
            return
        received = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await _answer(
                            send, TooLargeError(f"request body is above the {limit}-byte limit")
                        )
                    raise _Refused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer; whatever the route makes of the error is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _Refused:
            if not refused:
                raise


def _content_length(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return str(value.decode("latin-1").strip())
    return None


async def _answer(send: Send, error: TooLargeError | UsageError) -> None:
    body = json.dumps(error.to_dict()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.http_status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyBudget:
    """Bytes of request bodies (and what is decoded from them) held in memory at once.

    Each body is weighed by its size, at most the whole budget (one larger body still
    goes alone). First come, first served: while any hold waits, ``try_take`` refuses
    (a body arriving now must not pass the ones waiting, whose devices' claims on the
    blobs they carry run out while they wait), and room given back goes to the waiting
    holds in the order they came. Used from one event loop, the application's: nothing
    here awaits but a waiting hold.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise UsageError(f"the body budget must be positive, not {limit}")
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, anyio.Event]] = deque()

    def weigh(self, size: int) -> int:
        return max(1, min(size, self.limit))

    def try_take(self, weight: int) -> bool:
        if self._waiting or self.used + weight > self.limit:
            return False
        self.used += weight
        return True

    def give(self, weight: int) -> None:
        self.used -= weight
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.limit:
            weight, ready = self._waiting.popleft()
            self.used += weight
            ready.set()

    @asynccontextmanager
    async def hold(self, weight: int) -> AsyncIterator[None]:
        """Wait for ``weight`` bytes in turn, hold them for the block, give them back."""
        if not self.try_take(weight):
            turn = (weight, anyio.Event())
            self._waiting.append(turn)
            try:
                await turn[1].wait()
            except BaseException:  # cancelled while waiting (or just as its turn came)
                if turn[1].is_set():
                    self.give(weight)
                else:
                    self._waiting.remove(turn)
                    self._wake()  # the ones behind it may fit now
                raise
        try:
            yield
        finally:
            self.give(weight)


P = ParamSpec("P")
T = TypeVar("T")

#: Worker threads for heavy requests, per server process. A sync's work is CPU (decode,
#: verify, pack) under one interpreter lock and SQLite's one writer: more threads than
#: this add no throughput on a few cores, only wait for a light request behind them.
HEAVY_THREADS = 4


class HeavyWork:
    """Runs the blocking part of a heavy request in a worker thread of its own limiter.

    At most ``threads`` run at once; the others wait for a token in the event loop,
    holding no thread. One per application (``deps.AccessLimits``); its anyio limiter
    binds to the event loop that first uses it.
    """

    def __init__(self, threads: int = HEAVY_THREADS) -> None:
        self.limiter = anyio.CapacityLimiter(threads)

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await anyio.to_thread.run_sync(
            functools.partial(func, *args, **kwargs), limiter=self.limiter
        )
