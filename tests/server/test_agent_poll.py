"""An agent's poll (``fleet.agent_config``) writes only what must be written.

Hundreds of agents polling at once made every poll wait for the database's write lock
(``make bench-load``): a report that changes only the clock or free space is not written
again within ``STORE_EVERY``; a sync's progress is written at every report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, delete, event, insert, select, update

from lamina.db.catalog import SqlCatalog
from lamina.db.engine import after_writes, read_tx, write_tx
from lamina.db.models import cvds, devices, events, store_state
from lamina.db.sqlite_read import EPOCH_KEY
from lamina.errors import ConflictError
from lamina.protocol.schemas import (
    CentralizeRequest,
    EnrollRequest,
    HardwareFacts,
    PolicyCreate,
    PolicySettings,
    TokenCreate,
    UserCreate,
)
from lamina.server.security import ROLES, Principal
from lamina.server.services import agent_events, fleet, policies, tasks, users
from lamina.store.keys import StoreKeys

ADMIN = Principal("user", "u-admin", "admin", "administrator", ROLES["administrator"])


def issuer(engine: Engine) -> Principal:
    """``ADMIN``, a user of the database too: an enrollment token is only as good as the
    user who made it (``fleet.enroll``)."""
    with contextlib.suppress(ConflictError):
        users.create_user(
            engine,
            ADMIN,
            UserCreate(name=ADMIN.name, password="correct horse battery", role="administrator"),
        )
    return ADMIN


def active_devices(engine: Engine, n: int) -> list[Principal]:
    """``n`` enrolled devices, each with an active CVD under the policy "p"."""
    policies.create(engine, ADMIN, PolicyCreate(name="p", settings=PolicySettings()))
    token = fleet.create_token(engine, issuer(engine), TokenCreate(uses=n)).token
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


def _writes(engine: Engine) -> Callable[[], int]:
    """How many write transactions ``engine`` has ended since this call."""
    count = [0]
    after_writes(engine, lambda: count.__setitem__(0, count[0] + 1))
    return lambda: count[0]


def _facts(engine: Engine, device: Principal) -> object:
    with read_tx(engine) as c:
        return c.execute(select(devices.c.facts).where(devices.c.id == device.id)).scalar()


def test_facts_equal_to_the_stored_ones_make_no_write_transaction(engine: Engine) -> None:
    """The agent sends its facts at its start and after every sync: unchanged, they
    rewrite nothing (the device row, its driver-match rows); changed, they are stored
    before the answer."""
    pc = _active_device(engine)
    idle = {"state": "idle", "disk_free": 9 * 1024**3}
    fleet.agent_config(engine, pc, idle)
    writes = _writes(engine)
    facts = HardwareFacts(machine_id="m-pc1", hostname="pc1", vendor="ACME", disk_size=10**12)
    fleet.agent_config(engine, pc, idle, facts=facts)  # new facts: stored at once
    assert writes() == 1 and _facts(engine, pc) == facts.model_dump(mode="json")
    for _ in range(3):  # the same facts again: a read
        fleet.agent_config(engine, pc, {**idle, "disk_free": 8 * 1024**3}, facts=facts)
    assert writes() == 1
    # The same facts with a change of state: the state is stored, the facts left as they are.
    fleet.agent_config(engine, pc, {**idle, "state": "syncing"}, facts=facts)
    assert writes() == 2 and _stored(engine, pc)[0]["state"] == "syncing"
    changed = facts.model_copy(update={"disk_size": 2 * 10**12})
    fleet.agent_config(engine, pc, {**idle, "state": "syncing"}, facts=changed)
    assert writes() == 3 and _facts(engine, pc) == changed.model_dump(mode="json")


def test_a_poll_is_answered_by_one_query_with_the_stores_gc_epoch(sqlite_engine: Engine) -> None:
    """Under load a poll's time is mostly its round trips: its answer (status, CVD,
    policy, the store's gc epoch) is one query, the epoch the catalog's."""
    engine = sqlite_engine
    pc = _active_device(engine)
    with write_tx(engine) as c:
        c.execute(delete(store_state).where(store_state.c.key == EPOCH_KEY))
        c.execute(insert(store_state).values(key=EPOCH_KEY, value="7"))
    report = {"state": "idle", "disk_free": 9 * 1024**3}
    first = fleet.agent_config(engine, pc, report)
    assert first.gc_epoch == 7 == SqlCatalog(engine).gc_epoch()
    statements: list[str] = []

    def count(_c: object, _cur: object, sql: str, *_args: object) -> None:
        if sql.split()[0] not in ("BEGIN", "COMMIT", "ROLLBACK"):
            statements.append(sql)

    event.listen(engine, "before_cursor_execute", count)
    try:
        again = fleet.agent_config(engine, pc, {**report, "disk_free": 8 * 1024**3})
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert again == first and len(statements) == 1, statements
