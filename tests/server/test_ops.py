"""Operability routes: /metrics (Prometheus), /status and /fleet (the dashboard's, for the
CLI), /events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lamina.config import ServerSettings
from lamina.db.stores import StoreLocation, open_store, record_gc
from lamina.server.metrics import is_loopback
from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_metrics_on_loopback_count_routes_sync_and_fleet(live: Live) -> None:
    pc = live.device("pc1")
    pc.commit_files({b"a.txt": [b"hello metrics" * 100]})
    admin = live.login()
    assert admin.get(f"/cvds/{pc.cvd_id}").status_code == 200
    s = open_store(StoreLocation(data=live.data))
    try:
        record_gc(s, 1.5, 0)
    finally:
        s.close()
    r = httpx.get(live.url + "/metrics")  # no token: the test talks over loopback
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    found = samples(r.text)
    commits = value(
        found,
        "lamina_http_requests_total",
        method="POST",
        route="/api/v1/agent/commit",
        status="200",
    )
    assert commits == 1
    # The route's template, never the id a client typed.
    assert (
        value(
            found,
            "lamina_http_requests_total",
            method="GET",
            route="/api/v1/cvds/{ref}",
            status="200",
        )
        == 1
    )
    assert pc.cvd_id not in r.text
    assert value(found, "lamina_sync_commits_total") == 1
    assert value(found, "lamina_sync_uploaded_bytes_total") > 0
    assert value(found, "lamina_devices", state="online") == 1
    assert value(found, "lamina_devices", state="pending") == 0
    assert value(found, "lamina_devices_total") == 1
    assert value(found, "lamina_store_packs") >= 1
    assert value(found, "lamina_store_pack_bytes") > 0
    assert value(found, "lamina_gc_last_duration_seconds") == 1.5
    assert (
        value(found, "lamina_http_request_duration_seconds_count", route="/api/v1/agent/bundles")
        >= 2
    )
    # buckets of 10 ms below 100 ms: a p95 under 100 ms can be shown (docs/design.md)
    bounds = {
        dict(labels)["le"]
        for name, labels in found
        if name == "lamina_http_request_duration_seconds_bucket"
        and dict(labels)["route"] == "/api/v1/agent/bundles"
    }
    assert {"0.06", "0.07", "0.08", "0.09", "0.1"} <= bounds


@pytest.fixture
def token_metrics(tmp_path: Path) -> Iterator[Live]:
    settings = ServerSettings(
        data=tmp_path / "data",
        port=free_port(),
        admin_password=ADMIN_PASSWORD,
        workers=0,
        metrics="token",
    )
    for url in serve(settings):
        srv = Live(url, settings.data)
        yield srv
        for c in srv.clients:
            c.close()


def test_metrics_need_an_administrators_token_when_configured(token_metrics: Live) -> None:
    """The path a non-loopback client takes by default: only metrics.read (administrators)."""
    url = token_metrics.url + "/metrics"
    assert httpx.get(url).status_code == 401
    viewer = token_metrics.user("viewer", "readonly")
    token = viewer.headers["Authorization"]
    assert httpx.get(url, headers={"Authorization": token}).status_code == 403
    helpdesk = token_metrics.user("desk", "helpdesk")
    assert (
        httpx.get(url, headers={"Authorization": helpdesk.headers["Authorization"]}).status_code
        == 403
    )
    admin = token_metrics.login()
    r = httpx.get(url, headers={"Authorization": admin.headers["Authorization"]})
    assert r.status_code == 200
    assert "lamina_devices_total" in r.text


def test_metrics_off(tmp_path: Path) -> None:
    settings = ServerSettings(
        data=tmp_path / "data",
        port=free_port(),
        admin_password=ADMIN_PASSWORD,
        workers=0,
        metrics="off",
    )
    for url in serve(settings):
        assert httpx.get(url + "/metrics").status_code == 404


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.5.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("") and not is_loopback(None)
    assert not is_loopback("testclient") and not is_loopback("::ffff:10.0.0.1")


def test_status_and_fleet_are_the_dashboards(live: Live) -> None:
    pc = live.device("pc1")
    pc.commit_files({b"a.txt": [b"x" * 1000]})
    admin = live.login()
    # A pending device: enrolled with a token that names no policy.
    token = admin.post("/tokens", json={"expires_in": 3600}).json()["token"]
    r = httpx.post(
        live.url + "/api/v1/agent/enroll",
        json={
            "token": token,
            "facts": {"machine_id": "m2", "hostname": "pc2", "agent_version": "9.9"},
        },
    )
    assert r.status_code == 201, r.text
    st = admin.get("/status").json()
    assert st["counts"]["online"] == 1 and st["counts"]["pending"] == 1
    assert st["total"] == 2
    assert st["usage"]["snapshots"] == 1 and st["usage"]["pack_bytes"] > 0
    assert set(st["events"]) == {"error", "warning", "info"}
    page = admin.get("/fleet").json()
    by_host = {row["hostname"]: row for row in page["rows"]}
    assert by_host["pc1"]["health"] == ["online"]
    assert by_host["pc1"]["policy"] == "std" and by_host["pc1"]["last_sync"]
    assert by_host["pc2"]["health"] == ["pending"] and by_host["pc2"]["agent_version"] == "9.9"
    online = admin.get("/fleet", params={"state": "online"}).json()
    assert [row["hostname"] for row in online["rows"]] == ["pc1"]
    bad = admin.get("/fleet", params={"state": "sideways"})
    assert bad.status_code == 400 and "unknown state filter" in bad.json()["message"]
    assert httpx.get(live.url + "/api/v1/status").status_code == 401


def test_events_list_and_ack(live: Live) -> None:
    from lamina.db.engine import make_engine, write_tx
    from lamina.server.services.events import record

    engine = make_engine(f"sqlite:///{(live.data / 'lamina.db').resolve()}")
    with write_tx(engine) as c:
        record(c, "error", "agent", "pc1", "sync failed: disk full")
    engine.dispose()
    admin = live.login()
    rows = admin.get("/events", params={"pending": True}).json()
    assert [(e["severity"], e["message"]) for e in rows] == [("error", "sync failed: disk full")]
    viewer = live.user("viewer", "readonly")
    assert viewer.post(f"/events/{rows[0]['id']}/ack").status_code == 403
    r = admin.post(f"/events/{rows[0]['id']}/ack")
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "admin"
    assert admin.get("/events", params={"pending": True}).json() == []
    assert admin.post(f"/events/{rows[0]['id']}/ack").status_code == 409


def test_agent_reports_become_events_once_and_refresh_the_hostname(live: Live) -> None:
    import datetime as dt

    pc = live.device("pc1")
    admin = live.login()

    def report(**body: object) -> None:
        r = pc.client.post("/agent/config", json={"state": "idle", **body})
        assert r.status_code == 200, r.text

    def messages() -> list[tuple[str, str, str]]:
        return [
            (e["severity"], e["target"], e["message"])
            for e in reversed(admin.get("/events", params={"pending": True}).json())
        ]

    now = dt.datetime.now(dt.UTC)
    report(state="error", last_error="sync failed: server unreachable", clock=now.isoformat())
    report(state="error", last_error="sync failed: server unreachable", clock=now.isoformat())
    report(disk_free=1024**3, clock=now.isoformat())
    report(disk_free=512 * 1024**2, clock=now.isoformat())  # still low: no second event
    report(clock=(now + dt.timedelta(hours=1)).isoformat())
    report(clock=(now + dt.timedelta(hours=1)).isoformat())
    assert messages() == [
        ("error", "pc1", "agent error: sync failed: server unreachable"),
        ("warning", "pc1", "disk low: 1.0 GiB free"),
        ("warning", "pc1", "clock skew: the endpoint's clock is 60 min off the server's"),
    ]
    # A changed /etc/hostname shows at the next report.
    report(hostname="pc1-renamed")
    assert [d["hostname"] for d in admin.get("/devices").json()] == ["pc1-renamed"]
    bad = pc.client.post("/agent/config", json={"state": "idle", "hostname": "bad\x1bname"})
    assert bad.status_code == 400
    # A task the agent reports failed is an event too.
    task = admin.post(f"/cvds/{pc.cvd_id}/sync").json()
    work = pc.client.get("/agent/work").json()
    assert [w["task_id"] for w in work] == [task["id"]]
    r = pc.client.post(
        f"/agent/tasks/{task['id']}",
        json={"progress": 100, "state": "failed", "message": "disk full"},
    )
    assert r.status_code == 200, r.text
    assert messages()[-1] == ("error", pc.cvd_id, "task sync failed: disk full")
