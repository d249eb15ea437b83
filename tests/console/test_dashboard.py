"""Device health counts and the device list page, on a real SQLite database through the services."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from tests.server.test_agent_poll import issuer

from lamina.config import ServerSettings
from lamina.db.engine import write_tx
from lamina.db.models import devices
from lamina.errors import ConflictError, ForbiddenError, NotFoundError, UsageError
from lamina.protocol.schemas import (
    CentralizeRequest,
    EnrollRequest,
    HardwareFacts,
    PolicyCreate,
    PolicySettings,
    TaskReport,
    TokenCreate,
)
from lamina.server.app import open_context
from lamina.server.context import ServerContext
from lamina.server.security import ROLES, Principal
from lamina.server.services import cvd_ops, dashboard, events, fleet, journal, policies, tasks
from lamina.server.services.common import audit
from lamina.server.services.dashboard import DeviceQuery

ADMIN = Principal("user", "u-admin", "admin", "administrator", ROLES["administrator"])
READER = Principal("user", "u-reader", "reader", "readonly", ROLES["readonly"])


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    c, _ = open_context(ServerSettings(data=tmp_path / "data", admin_password="pw-12345678"))
    yield c
    c.store.close()


def _device(ctx: ServerContext, token: str, host: str, model: str = "T14") -> Principal:
    req = EnrollRequest(
        token=token, facts=HardwareFacts(machine_id=f"m-{host}", hostname=host, model=model)
    )
    out = fleet.enroll(ctx.engine, req, ctx.store.keys.chunking)
    return Principal("device", out.device_id, f"device {host}")


def _finish(ctx: ServerContext, dev: Principal, host: str, state: str) -> None:
    cvd_ops.request_sync(ctx.engine, ADMIN, host)
    (item,) = tasks.claim_for_device(ctx.engine, dev, "test")
    tasks.report(ctx.engine, dev, item.task_id, TaskReport(progress=100, state=state))  # type: ignore[arg-type]


@pytest.fixture
def fleet_of_six(ctx: ServerContext) -> ServerContext:
    """pending-1; online-1; offline-1 (silent 3 h, policy interval 1 h); failing-1 (newest
    task failed); recovered-1 (a failed task, then a done one); lowdisk-1 (1 GiB free);
    syncerror-1 (its agent's last scheduled sync failed)."""
    policies.create(
        ctx.engine, ADMIN, PolicyCreate(name="hourly", settings=PolicySettings(interval=3600))
    )
    token = fleet.create_token(ctx.engine, issuer(ctx.engine), TokenCreate(uses=7)).token
    devs = {
        h: _device(ctx, token, h)
        for h in (
            "pending-1",
            "online-1",
            "offline-1",
            "failing-1",
            "recovered-1",
            "lowdisk-1",
            "syncerror-1",
        )
    }
    for h, d in devs.items():
        if h != "pending-1":
            fleet.centralize(ctx.engine, ADMIN, h, CentralizeRequest(policy="hourly"))
            fleet.agent_config(ctx.engine, d, {"state": "idle", "disk_free": 50 * 1024**3})
    fleet.agent_config(ctx.engine, devs["lowdisk-1"], {"state": "idle", "disk_free": 1024**3})
    fleet.agent_config(ctx.engine, devs["syncerror-1"], {"state": "error", "disk_free": 10**11})
    _finish(ctx, devs["failing-1"], "failing-1", "done")
    _finish(ctx, devs["failing-1"], "failing-1", "failed")
    _finish(ctx, devs["recovered-1"], "recovered-1", "failed")
    _finish(ctx, devs["recovered-1"], "recovered-1", "done")
    three_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)  # time passing, simulated
    with write_tx(ctx.engine) as c:
        c.execute(
            update(devices)
            .where(devices.c.hostname == "offline-1")
            .values(last_seen=three_hours_ago)
        )
    return ctx


def test_health_counts_follow_the_policy_interval_the_newest_task_and_free_disk(
    fleet_of_six: ServerContext,
) -> None:
    s = dashboard.summary(fleet_of_six.engine, READER)
    assert s.total == 7
    assert s.counts == {"pending": 1, "online": 5, "offline": 1, "failing": 2, "lowdisk": 1}

    def hosts(health: str) -> list[str]:
        page = dashboard.device_page(fleet_of_six.engine, READER, DeviceQuery(health=health))
        return [r.hostname for r in page.rows]

    assert hosts("pending") == ["pending-1"]
    assert hosts("offline") == ["offline-1"]
    assert hosts("failing") == ["failing-1", "syncerror-1"]  # recovered-1's is not its newest
    assert hosts("lowdisk") == ["lowdisk-1"]
    assert hosts("online") == ["failing-1", "lowdisk-1", "online-1", "recovered-1", "syncerror-1"]


def test_the_device_list_is_paged_sorted_and_searched_on_the_server(
    fleet_of_six: ServerContext,
) -> None:
    engine = fleet_of_six.engine
    first = dashboard.device_page(engine, READER, DeviceQuery(size=4))
    second = dashboard.device_page(engine, READER, DeviceQuery(size=4, page=2))
    assert first.total == second.total == 7 and first.pages == 2
    names = [r.hostname for r in first.rows + second.rows]
    assert names == sorted(names) and len(set(names)) == 7
    desc = dashboard.device_page(engine, READER, DeviceQuery(descending=True, size=1))
    assert desc.rows[0].hostname == "syncerror-1"
    hit = dashboard.device_page(engine, READER, DeviceQuery(search="LINE-1"))
    assert [r.hostname for r in hit.rows] == ["offline-1", "online-1"]
    assert hit.rows[0].policy == "hourly" and hit.rows[0].cvd_name == "offline-1"
    # Search text is literal: % and _ are not wildcards.
    assert dashboard.device_page(engine, READER, DeviceQuery(search="%")).total == 0
    assert dashboard.device_page(engine, READER, DeviceQuery(search="_")).total == 0
    # Past the last page: no rows, and still the number of matches.
    past = dashboard.device_page(engine, READER, DeviceQuery(size=4, page=3))
    assert past.rows == [] and past.total == 7


def test_the_dashboard_counts_again_once_its_counts_are_older_than_their_age(
    fleet_of_six: ServerContext,
) -> None:
    engine = fleet_of_six.engine
    first = dashboard.recent_summary(engine, READER)
    assert first.counts == dashboard.summary(engine, READER).counts
    with write_tx(engine) as c:  # a pending device is rejected meanwhile
        c.execute(
            update(devices).where(devices.c.hostname == "pending-1").values(status="rejected")
        )
    # Within its age the same counts, saying when they were taken; past it, counted again.
    assert dashboard.recent_summary(engine, READER, usage=False) is first
    fresh = dashboard.recent_summary(engine, READER, max_age=0)
    assert fresh.counts["pending"] == 0 and fresh.at >= first.at
    assert dashboard.recent_summary(engine, READER) is fresh
    with pytest.raises(ForbiddenError):
        dashboard.recent_summary(engine, Principal("device", "d", "d", "active"))


def test_bad_list_queries_are_usage_errors_and_devices_can_not_read_the_fleet(
    fleet_of_six: ServerContext,
) -> None:
    engine = fleet_of_six.engine
    for q in (
        DeviceQuery(health="gone"),
        DeviceQuery(sort="facts; DROP TABLE devices"),
        DeviceQuery(page=0),
        DeviceQuery(size=100000),
    ):
        with pytest.raises(UsageError):
            dashboard.device_page(engine, READER, q)
    device = Principal("device", "d", "device x")
    with pytest.raises(ForbiddenError):
        dashboard.summary(engine, device)
    with pytest.raises(ForbiddenError):
        dashboard.device_page(engine, device, DeviceQuery())


def test_events_wait_by_severity_until_acknowledged_once_by_an_operator(
    ctx: ServerContext,
) -> None:
    with write_tx(ctx.engine) as c:
        events.record(c, "error", "task", "desk-01", "sync failed: disk full")
        events.record(c, "warning", "store", "store", "a pack is missing")
        with pytest.raises(UsageError):
            events.record(c, "panic", "x", "y", "z")
    assert events.unacknowledged(ctx.engine, READER) == {"error": 1, "warning": 1, "info": 0}
    newest, oldest = events.list_events(ctx.engine, READER)
    with pytest.raises(ForbiddenError):
        events.acknowledge(ctx.engine, READER, oldest.id)
    events.acknowledge(ctx.engine, ADMIN, oldest.id)
    with pytest.raises(ConflictError):
        events.acknowledge(ctx.engine, ADMIN, oldest.id)
    with pytest.raises(NotFoundError):
        events.acknowledge(ctx.engine, ADMIN, 999)
    assert events.unacknowledged(ctx.engine, READER) == {"error": 0, "warning": 1, "info": 0}
    assert [e.id for e in events.list_events(ctx.engine, READER, pending_only=True)] == [newest.id]
    (acked,) = [e for e in events.list_events(ctx.engine, READER) if e.id == oldest.id]
    assert acked.acknowledged_by == "admin" and acked.acknowledged is not None


def test_the_audit_search_filters_by_user_action_and_time_and_pages_backwards(
    ctx: ServerContext,
) -> None:
    with write_tx(ctx.engine) as c:
        for i in range(150):
            audit(c, "alice" if i % 2 else "bob", ("cvd.sync", "layer.assign")[i % 3 == 0], f"t{i}")
    page1 = journal.search(ctx.engine, ADMIN, limit=100)
    page2 = journal.search(ctx.engine, ADMIN, before_id=int(page1[-1].id), limit=100)
    ids = [int(e.id) for e in page1 + page2]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 151  # + admin's creation
    assert {e.actor for e in journal.search(ctx.engine, ADMIN, user="alice")} == {"alice"}
    cvd_only = journal.search(ctx.engine, ADMIN, action="cvd.*", limit=1000)
    assert len(cvd_only) == 100 and {e.action for e in cvd_only} == {"cvd.sync"}
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert journal.search(ctx.engine, ADMIN, since=tomorrow) == []
    assert len(journal.search(ctx.engine, ADMIN, until=tomorrow, limit=1000)) == 151
    with pytest.raises(ForbiddenError):
        journal.search(ctx.engine, READER)
