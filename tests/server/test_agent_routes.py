"""The hot routes of a sync (``server/api/agent.py``) cost the framework little per request."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy import insert

from lamina.db.engine import make_engine
from lamina.db.models import tasks
from lamina.server.services.credentials import DeviceCredentials
from lamina.store.blob import BlobKind
from lamina.tree.model import encode_tree
from tests.server.conftest import Live


def _count_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions requests hand to a worker thread, from now on."""
    hops: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        hops.append(getattr(func, "func", func).__name__)
        return await real(func, *args, **kw)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return hops


def test_a_sync_request_takes_one_worker_thread_for_its_work_once_its_device_is_known(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every hop to a worker thread costs more CPU than the checks FastAPI would run in
    # it: the dependencies that do no I/O run on the event loop, a device credential
    # this server verified already is known without a database read
    # (``services/credentials.py``), and the route's work (and the validation of its
    # answer) takes one hop, not two.
    dev = live.device("hops")
    [root] = dev.upload([(BlobKind.TREE, encode_tree([]))])
    hops = _count_hops(monkeypatch)
    r = dev.client.post("/agent/missing", json={"ids": [os.urandom(32).hex()]})
    assert r.status_code == 200, r.text
    assert hops == ["device_missing"]
    hops.clear()
    r = dev.client.post("/agent/commit", json={"root": root.hex(), "files": 0, "bytes": 0})
    assert r.status_code == 200, r.text
    assert hops == ["commit_snapshot"]


def test_a_poll_takes_one_worker_thread_for_its_work_once_its_device_is_known(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent's polls were plain ``def`` routes: a third hop validated the answer, and
    # under load each hop waited for a thread and the interpreter lock.
    dev = live.device("poll-hops")
    assert dev.client.get("/agent/work").status_code == 200  # its credential verified once
    hops = _count_hops(monkeypatch)
    r = dev.client.post("/agent/config", json={"state": "idle"})
    assert r.status_code == 200, r.text
    assert r.json()["cvd_id"] == dev.cvd_id
    assert hops == ["_config"]
    hops.clear()
    r = dev.client.get("/agent/work")
    assert r.status_code == 200, r.text
    assert r.json() == []
    assert hops == ["claim_for_device"]


def test_a_poll_checks_a_credential_it_does_not_know_in_its_one_worker_thread(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The credential check of a poll whose credential this process does not know (every
    # poll on PostgreSQL, where the cache is off) took a worker thread of its own before
    # the poll took a second (docs/design.md, "Polls under load (session 14)").
    dev = live.device("unknown-hops")
    gone = live.device("revoked-hops")
    assert live.login().post("/devices/revoked-hops/revoke").status_code == 200
    monkeypatch.setattr(DeviceCredentials, "get", lambda _self, _hash: None)  # as on PostgreSQL
    hops = _count_hops(monkeypatch)
    for method, path, body, answer in (
        ("POST", "/agent/config", {"state": "idle"}, 200),
        ("GET", "/agent/work", None, 200),
        ("POST", "/agent/tasks/no-such-task", {"progress": 1}, 404),
    ):
        for client, status in ((dev.client, answer), (gone.client, 401)):
            hops.clear()
            r = client.request(method, path, json=body)
            assert r.status_code == status, (path, r.text)
            assert len(hops) == 1, (path, hops)


def test_a_pending_devices_work_poll_checked_by_its_own_query_gets_no_work(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the credential checked by the claim's own query (the route no longer knows
    # the device's status before its worker thread), a pending device still gets no work.
    admin = live.login()
    token = admin.post("/tokens", json={"expires_in": 3600}).json()["token"]  # no policy
    facts = {"machine_id": "pending-work", "hostname": "pending-work"}
    r = live.client().post("/agent/enroll", json={"token": token, "facts": facts})
    assert r.status_code == 201, r.text
    pending = live.client(r.json()["credential"])
    # A queued task addressed to it (none can be through the API: tasks go to active
    # CVDs), so that only the status check keeps it from the pending device.
    engine = make_engine(f"sqlite:///{live.data / 'lamina.db'}")
    with engine.begin() as c:
        c.execute(
            insert(tasks).values(
                id=str(uuid.uuid4()), kind="sync", state="queued", progress=0, message="",
                device_id=r.json()["device_id"], params={}, result={}, created_by="test",
                created=dt.datetime.now(dt.UTC),
            )
        )  # fmt: skip
    engine.dispose()
    monkeypatch.setattr(DeviceCredentials, "get", lambda _self, _hash: None)  # as on PostgreSQL
    r = pending.get("/agent/work")
    assert r.status_code == 200, r.text
    assert r.json() == []
    assert pending.post("/agent/config", json={"state": "idle"}).json()["status"] == "pending"


def test_a_poll_is_matched_by_the_first_routes_the_router_tries(tmp_path: Path) -> None:
    # The router tries its routes in order, each a few µs of the event loop's CPU: an
    # agent's poll (the request a server answers most) must not wait behind the console's
    # and the admin API's routes; and no other route may answer a path of the agent's, so
    # that trying the agent's first changes no answer.
    from starlette.routing import Match

    from lamina.config import ServerSettings
    from lamina.server.app import create_app

    app = create_app(ServerSettings(data=tmp_path / "data", admin_password="x" * 16))

    def tried(path: str, method: str) -> tuple[int, list[int]]:
        scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
        found = [
            i for i, r in enumerate(app.router.routes) if r.matches(dict(scope))[0] != Match.NONE
        ]
        return found[0] + 1, found

    config, config_matches = tried("/api/v1/agent/config", "POST")
    work, work_matches = tried("/api/v1/agent/work", "GET")
    assert config == work == 6  # the API documents' four routes, health, then the agent's
    assert len(config_matches) == len(work_matches) == 1
    for path in ("/api/v1/agent/bundles", "/api/v1/agent/tasks/x", "/api/v1/agent/enroll"):
        assert len(tried(path, "POST")[1]) == 1, path


def test_a_request_asks_nothing_of_opentelemetry(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastAPI's telemetry bridge looked up OpenTelemetry's global providers for every
    # request, to find none set up: Lamina counts its requests itself (``/metrics``).
    from opentelemetry import metrics, trace

    asked: list[str] = []
    for module, name in ((trace, "get_tracer_provider"), (metrics, "get_meter_provider")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda real=real, name=name: asked.append(name) or real())
    device = live.device("pc-otel")
    assert device.client.post("/agent/config", json={"state": "idle"}).status_code == 200
    assert device.client.get("/agent/work").status_code == 200
    assert live.client().get("/health").status_code == 200
    assert asked == []
