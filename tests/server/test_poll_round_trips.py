"""What an agent's poll asks of PostgreSQL, counted in round trips (docs/design.md, "Polls
under load (session 13)").

Under load a poll's time on PostgreSQL is its round trips, each waiting for the network,
the interpreter lock and a core: counted here as the messages that end a request to the
server (a simple ``Query``, or the ``Sync`` that ends a statement of the extended
protocol), read from libpq's own trace of each pooled connection, so the ``BEGIN``,
``COMMIT`` and the pool's connection test are counted too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, select

from lamina.db import engine as db_engine
from lamina.db.engine import read_once, read_tx, write_tx
from lamina.db.models import cvds, devices
from lamina.errors import AuthError
from lamina.protocol.schemas import HardwareFacts
from lamina.server.security import DEVICE_TOKEN, Principal, new_token, token_hash
from lamina.server.services import fleet, tasks, users
from lamina.server.services.credentials import Presented
from lamina.server.services.progress import ProgressReports
from tests.conftest import PostgresServer
from tests.server.conftest import migrated
from tests.server.test_agent_poll import active_devices

pytestmark = pytest.mark.e2e  # a real PostgreSQL


@pytest.fixture
def pg_engine(pg_db_url: str) -> Iterator[Engine]:
    yield from migrated(pg_db_url)


class RoundTrips:
    """Counts the requests every pooled connection of an engine sends PostgreSQL."""

    def __init__(self, engine: Engine, trace: Path) -> None:
        engine.dispose()  # connections opened from now on are traced
        self.trace = trace
        self._out = trace.open("w")
        self._mark = 0

        self.engine = engine
        event.listen(engine.pool, "connect", self._traced)

    def _traced(self, dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.pgconn.trace(self._out.fileno())
        dbapi_conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def close(self) -> None:
        event.remove(self.engine.pool, "connect", self._traced)
        self.engine.dispose()
        self._out.close()

    def sent(self) -> list[str]:
        """The requests sent since the last call: ``Query <text>`` or ``Sync <text>``."""
        self._out.flush()
        lines = self.trace.read_text().splitlines()
        new, self._mark = lines[self._mark :], len(lines)
        out, statement = [], ""
        for line in new:
            fields = line.split("\t")
            if len(fields) < 3 or fields[0] != "F":
                continue
            if fields[2] == "Parse":
                statement = fields[3].split('"')[3].split()[0] if len(fields) > 3 else ""
            elif fields[2] == "Query":
                out.append("Query " + fields[3].strip().strip('"').split()[0])
            elif fields[2] == "Sync":
                out.append("Sync " + statement)
        return out


@pytest.fixture(autouse=True)
def no_idle_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The round trips counted here are the requests' own: a pooled connection is tested
    once it sat idle ``PING_IDLE_SECONDS``, which a stalled host could reach mid-test."""
    monkeypatch.setattr(db_engine, "PING_IDLE_SECONDS", 3600.0)


@contextmanager
def counting(engine: Engine, tmp_path: Path) -> Iterator[RoundTrips]:
    trips = RoundTrips(engine, tmp_path / "libpq.trace")
    try:
        yield trips
    finally:
        trips.close()


def _report(state: str, **extra: Any) -> dict[str, Any]:
    return {"state": state, "progress": {}, "disk_free": 9 * 1024**3, "hostname": "pc1", **extra}


def test_a_poll_is_one_round_trip_and_a_stored_report_five_more(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """A poll that writes nothing (an idle agent, a sync's progress, unchanged facts) is
    its one query: no test of the pooled connection, no BEGIN or COMMIT (it was four
    round trips). One that changes the state is that query and one write transaction of
    five (BEGIN, the device row locked with its CVD, the two updates, COMMIT; it was
    twelve: a read transaction of four, then eight). The device's credential is one more,
    and so is an idle agent's work poll."""
    engine = pg_engine
    pc = active_devices(engine, 1)[0]
    later = ProgressReports(engine, fleet.store_report, schedule=lambda _d, _f: None)
    facts = HardwareFacts(machine_id="m-pc1", hostname="pc1")
    with counting(engine, tmp_path) as trips:
        fleet.agent_config(engine, pc, _report("idle"), facts=facts)  # opens the connection
        trips.sent()
        fleet.agent_config(engine, pc, _report("idle"), facts=facts)  # the agent's start
        assert trips.sent() == ["Sync SELECT"]
        syncing = {"state": "syncing", "progress": {"files": 0}}
        fleet.agent_config(engine, pc, syncing, later=later)  # the sync's start: stored
        assert trips.sent() == [
            "Sync SELECT",  # the poll's answer and the stored report
            "Query BEGIN",
            "Sync SELECT",  # ... FOR UPDATE OF devices, with the active CVD
            "Sync UPDATE",
            "Sync UPDATE",  # the CVD's progress
            "Query COMMIT",
        ]
        fleet.agent_config(engine, pc, {**syncing, "progress": {"files": 1}}, later=later)
        assert trips.sent() == ["Sync SELECT"]  # kept for the flush
        assert later.waiting() == 1
        credential = pc_credential(engine, pc)
        trips.sent()
        assert users.authenticate(engine, credential).id == pc.id
        assert trips.sent() == ["Sync SELECT"]  # a read transaction of four before
        # the work poll of a restarted agent with nothing to requeue nor to claim
        assert tasks.claim_for_device(engine, pc, "server-test", restarted=True) == []
        assert trips.sent() == ["Sync SELECT"]  # two read transactions of four before
    with read_tx(engine) as c:
        state = c.execute(select(devices.c.agent_state).where(devices.c.id == pc.id)).scalar()
    assert state is not None and state["state"] == "syncing"


def test_a_poll_checks_its_credential_in_its_one_round_trip(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """A poll whose credential the server does not know (every poll on PostgreSQL: the
    cache of verified credentials is off there) checks it against the device row its
    own query reads: one round trip, where the check was one more, in a worker thread
    of its own. A revoked or unknown credential is refused by the same query."""
    engine = pg_engine
    pc, other = active_devices(engine, 2)
    credential = pc_credential(engine, pc)
    presented = Presented(token_hash(credential))
    with counting(engine, tmp_path) as trips:
        fleet.agent_config(engine, presented, _report("idle"))  # opens the connection
        trips.sent()
        answer = fleet.agent_config(engine, presented, _report("idle"))
        assert trips.sent() == ["Sync SELECT"]
        assert answer.device_id == pc.id and answer.status == "active"
        with pytest.raises(AuthError, match="unknown or revoked"):
            fleet.agent_config(engine, Presented(token_hash(new_token(DEVICE_TOKEN))), {})
        assert trips.sent() == ["Sync SELECT"]
        revoked = pc_credential(engine, other)
        with write_tx(engine) as c:
            c.execute(devices.update().where(devices.c.id == other.id).values(status="revoked"))
        trips.sent()
        with pytest.raises(AuthError, match="revoked"):
            fleet.agent_config(engine, Presented(token_hash(revoked)), _report("idle"))
        assert trips.sent() == ["Sync SELECT"]  # nothing stored for a refused credential
        # the work poll: the device's row and its open tasks in one query
        assert tasks.claim_for_device(engine, presented, "server-test", restarted=True) == []
        assert trips.sent() == ["Sync SELECT"]
        with pytest.raises(AuthError, match="revoked"):
            tasks.claim_for_device(engine, Presented(token_hash(revoked)), "server-test")
        assert trips.sent() == ["Sync SELECT"]
        assert users.verify_device(engine, presented).id == pc.id  # a task report's check
        assert trips.sent() == ["Sync SELECT"]


def pc_credential(engine: Engine, pc: Principal) -> str:
    """A fresh credential for ``pc`` (only its hash is stored)."""
    token = new_token(DEVICE_TOKEN)
    with write_tx(engine) as c:
        c.execute(
            devices.update().where(devices.c.id == pc.id).values(credential_hash=token_hash(token))
        )
    return token


def test_a_pooled_connection_is_tested_only_after_sitting_idle(
    pg_engine: Engine,
    pg_db_url: str,
    postgres_server: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection used again at once is not tested (SQLAlchemy's pre-ping tested it at
    every checkout: a round trip per transaction); one that sat idle longer than
    ``PING_IDLE_SECONDS`` is, and if the server closed it meanwhile, the pool replaces it
    and the read succeeds."""
    engine = pg_engine
    with counting(engine, tmp_path) as trips:
        with read_once(engine) as c:
            pid = c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        trips.sent()
        with read_once(engine) as c:
            assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
        assert trips.sent() == ["Query SELECT"]
        monkeypatch.setattr(db_engine, "PING_IDLE_SECONDS", -1.0)  # every one has sat idle
        with read_once(engine) as c:
            assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
        assert trips.sent() == ["Query ;", "Query SELECT"]  # the test, then the read
        with postgres_server.admin() as admin:  # the server closes the idle connection
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with read_once(engine) as c:
            assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
        with read_tx(engine) as c:
            assert c.execute(select(cvds.c.id)).all() == []
