"""The request middleware's two clocks (``server/metrics.py``)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina.server import metrics
from lamina.server.context import ServerContext
from lamina.server.metrics import Metrics, RequestMetrics


class Clock:
    """``time.perf_counter`` as the test sets it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _observed(m: Metrics, name: str) -> float:
    value = m.registry.get_sample_value(f"{name}_sum", {"route": "other"})
    assert value is not None
    return value


def test_a_body_sent_late_counts_in_the_duration_but_not_in_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent descheduled between its headers and its body (``make bench-load``'s
    agents run at SCHED_IDLE) makes the request last longer than the server takes to
    answer it: the duration counts from the headers, the answer from the last body part."""
    clock = Clock()
    monkeypatch.setattr(metrics.time, "perf_counter", clock)
    m = Metrics(cast(ServerContext, object()))
    parts = iter([b'{"a": ', b"1}"])

    async def receive() -> Message:
        clock.now += 2.0  # the client sends its body parts late
        part = next(parts)
        return {"type": "http.request", "body": part, "more_body": part != b"1}"}

    async def app(_scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        clock.now += 0.03  # the server's own work
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(_message: Message) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    asyncio.run(RequestMetrics(app, m)(scope, receive, send))
    assert _observed(m, "lamina_http_request_duration_seconds") == pytest.approx(4.03)
    assert _observed(m, "lamina_http_request_answer_seconds") == pytest.approx(0.03)
    # a request without a body: both from its headers
    asyncio.run(RequestMetrics(app_without_body(clock), m)(scope, receive, send))
    assert _observed(m, "lamina_http_request_answer_seconds") == pytest.approx(0.03 + 0.5)


def app_without_body(clock: Clock) -> ASGIApp:
    async def app(_scope: Scope, _receive: Receive, send: Send) -> None:
        clock.now += 0.5
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app
