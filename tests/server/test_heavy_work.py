"""A sync's heavy requests run on worker threads of their own (``limits.HeavyWork``).

Under ``make bench-load`` every bundle and commit took one of anyio's 40 default worker
threads, so an agent's poll queued behind them. Here more heavy requests than there are
default threads are held inside their work by a gate: only ``HEAVY_THREADS`` of them hold
a thread, the others wait for a token in the event loop, and a poll is still answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from lamina.config import ServerSettings
from lamina.errors import UsageError
from lamina.server import limits
from lamina.server.app import create_app
from lamina.server.services import sync
from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve

#: More than anyio's default thread limiter holds (40).
HELD = 45


@pytest.fixture
def app_and_live(tmp_path: Path) -> Iterator[tuple[FastAPI, Live]]:
    settings = ServerSettings(
        data=tmp_path / "data", port=free_port(), admin_password=ADMIN_PASSWORD
    )
    app = create_app(settings)
    for url in serve(settings, app):
        srv = Live(url, settings.data)
        try:
            yield app, srv
        finally:
            for c in srv.clients:
                c.close()


class Gate:
    """Stands in for a commit's work: counts who is inside, holds them until opened."""

    def __init__(self) -> None:
        self.inside = 0
        self.most_inside = 0
        self.lock = threading.Lock()
        self.opened = threading.Event()

    def __call__(self, *_args: Any) -> None:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            self.opened.wait()
        finally:
            with self.lock:
                self.inside -= 1
        raise UsageError("held by the test's gate")


def _waiting_for_heavy(app: FastAPI) -> int:
    state = getattr(app.state, "access_limits", None)  # made by the first device request
    return 0 if state is None else int(state.heavy.limiter.statistics().tasks_waiting)


def _until(what: str, done: Any) -> None:
    """Wait for ``done()`` (a state the server reaches, not a duration); a hang fails."""
    for _ in range(6000):
        if done():
            return
        time.sleep(0.01)
    raise AssertionError(f"never reached: {what}")


def test_a_poll_is_answered_while_heavy_requests_hold_more_than_the_default_threads(
    app_and_live: tuple[FastAPI, Live], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, live = app_and_live
    dev = live.device("pc1")
    gate = Gate()
    monkeypatch.setattr(sync, "commit_snapshot", gate)
    body = {"root": "00" * 32, "files": 1, "bytes": 0}
    with ThreadPoolExecutor(HELD) as pool:
        held = [pool.submit(dev.client.post, "/agent/commit", json=body) for _ in range(HELD)]
        try:
            # Every held request is inside the server: HEAVY_THREADS in their work, the
            # rest waiting for a heavy token (holding no thread).
            _until(
                "all held requests in the server",
                lambda: (
                    gate.inside == limits.HEAVY_THREADS
                    and _waiting_for_heavy(app) == HELD - limits.HEAVY_THREADS
                ),
            )
            poll = dev.client.get("/agent/work")
            assert poll.status_code == 200, poll.text
            assert poll.json() == []
            answered_while_held = gate.inside == limits.HEAVY_THREADS
        finally:
            gate.opened.set()
        statuses = [f.result().status_code for f in held]
    assert answered_while_held
    assert gate.most_inside == limits.HEAVY_THREADS
    assert statuses == [400] * HELD  # each reached its (gated) work, none was refused
