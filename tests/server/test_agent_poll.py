"""An agent's poll (``fleet.agent_config``) writes only what must be written.

Hundreds of agents polling at once made every poll wait for the database's write lock
(``make bench-load``): a report that changes only the clock or free space is not written
again within ``STORE_EVERY``; a sync's progress is written at every report.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import cvds, devices, events
from lamina.protocol.schemas import (
    CentralizeRequest,
    EnrollRequest,
    HardwareFacts,
    PolicyCreate,
    PolicySettings,
    TokenCreate,
)
from lamina.server.security import ROLES, Principal
from lamina.server.services import agent_events, fleet, policies, tasks
from lamina.store.keys import StoreKeys

ADMIN = Principal("user", "u-admin", "admin", "administrator", ROLES["administrator"])


def active_devices(engine: Engine, n: int) -> list[Principal]:
    """``n`` enrolled devices, each with an active CVD under the policy "p"."""
    policies.create(engine, ADMIN, PolicyCreate(name="p", settings=PolicySettings()))
    token = fleet.create_token(engine, ADMIN, TokenCreate(uses=n)).token
    chunking = StoreKeys.generate().chunking
    out = []
    for i in range(1, n + 1):
        facts = HardwareFacts(machine_id=f"m-pc{i}", hostname=f"pc{i}")
        dev = fleet.enroll(engine, EnrollRequest(token=token, facts=facts), chunking)
        fleet.centralize(engine, ADMIN, f"pc{i}", CentralizeRequest(policy="p"))
        out.append(Principal("device", dev.device_id, f"device pc{i}", role="active"))
    return out


def _active_device(engine: Engine) -> Principal:
    return active_devices(engine, 1)[0]


def _stored(engine: Engine, device: Principal) -> tuple[dict[str, object], object, int]:
    """The device's stored report, its CVD's progress, and how many events there are."""
    with read_tx(engine) as c:
        state = c.execute(select(devices.c.agent_state).where(devices.c.id == device.id)).scalar()
        progress = c.execute(select(cvds.c.progress).where(cvds.c.device_id == device.id)).scalar()
        n = len(c.execute(select(events.c.id)).all())
    return state or {}, progress, n


def test_a_clock_or_free_space_report_is_stored_at_most_every_store_every(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    pc = _active_device(engine)
    first = fleet.agent_config(
        engine, pc, {"state": "syncing", "progress": {"files": 1}, "disk_free": 9 * 1024**3}
    )
    assert first.cvd_id is not None and first.policy is not None
    assert _stored(engine, pc)[:2] == (
        {
            "state": "syncing",
            "progress": {"files": 1},
            "disk_free": 9 * 1024**3,
            "clock_skew": False,
        },
        {"files": 1},
    )
    # Only the free space moved, a second later: answered the same, nothing written.
    again = fleet.agent_config(
        engine, pc, {"state": "syncing", "progress": {"files": 1}, "disk_free": 8 * 1024**3}
    )
    assert again == first
    assert _stored(engine, pc)[0]["disk_free"] == 9 * 1024**3
    # The progress moved: written at once (the console shows where a sync stands).
    fleet.agent_config(engine, pc, {"state": "syncing", "progress": {"files": 2}})
    assert _stored(engine, pc)[1] == {"files": 2}
    # A lasting field changed: stored at once, with its event.
    fleet.agent_config(engine, pc, {"state": "error", "last_error": "disk full", "progress": {}})
    state, progress, n_events = _stored(engine, pc)
    assert (state["state"], progress, n_events) == ("error", {}, 1)
    # Free space falling below LOW_DISK is an event at once, whatever its age.
    low = {"state": "error", "last_error": "disk full", "disk_free": 1024**2, "progress": {}}
    fleet.agent_config(engine, pc, low)
    assert _stored(engine, pc)[2] == 2
    # Once the stored report is STORE_EVERY old, the next report is written, however little moved.
    fleet.agent_config(engine, pc, {**low, "disk_free": 1024**2 + 1})
    assert _stored(engine, pc)[0]["disk_free"] == 1024**2
    with write_tx(engine) as c:
        old = dt.datetime.now(dt.UTC) - agent_events.STORE_EVERY
        c.execute(update(devices).where(devices.c.id == pc.id).values(last_seen=old))
    fleet.agent_config(engine, pc, {**low, "disk_free": 1024**2 + 2})
    assert _stored(engine, pc)[0]["disk_free"] == 1024**2 + 2


def test_an_idle_poll_opens_no_write_transaction(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle agent's poll (a report that moved only its free space, then its work
    queue, empty) reads only: it never queues for SQLite's one writer behind a sync."""
    engine = sqlite_engine
    pc = _active_device(engine)
    report = {"state": "idle", "disk_free": 9 * 1024**3}
    stored = fleet.agent_config(engine, pc, report)

    def refuse(_engine: Engine) -> None:
        raise AssertionError("a poll opened a write transaction")

    monkeypatch.setattr(fleet, "write_tx", refuse)
    monkeypatch.setattr(tasks, "write_tx", refuse)
    assert fleet.agent_config(engine, pc, {**report, "disk_free": 8 * 1024**3}) == stored
    assert tasks.claim_for_device(engine, pc, "server-test") == []
