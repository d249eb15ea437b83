"""Device credentials verified once per server process (``services/credentials.py``),
and every revocation honoured at the next request."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, insert, update

from lamina.db.engine import write_tx
from lamina.db.models import devices
from lamina.errors import AuthError
from lamina.server.security import DEVICE_TOKEN, Principal, token_hash
from lamina.server.services import credentials
from lamina.server.services.credentials import DeviceCredentials, writes_credentials
from lamina.server.services.users import authenticate
from tests.server.conftest import Live

TOKEN = DEVICE_TOKEN + "a-device-credential-for-the-cache-tests"


@pytest.fixture
def device_reads() -> Iterator[list[str]]:
    """The statements that read the ``devices`` table, from every engine of this process."""
    seen: list[str] = []

    def on_statement(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "FROM devices" in statement and statement.lstrip().startswith("SELECT"):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", on_statement)
    yield seen
    event.remove(Engine, "before_cursor_execute", on_statement)


def _device(engine: Engine, status: str = "active") -> str:
    device_id = str(uuid.uuid4())
    with write_tx(engine) as c:
        c.execute(
            insert(devices).values(
                id=device_id,
                hostname="cached",
                status=status,
                facts={},
                credential_hash=token_hash(TOKEN),
                enrolled=dt.datetime.now(dt.UTC),
                agent_state={},
            )
        )
    return device_id


def _set(engine: Engine, device_id: str, **values: object) -> None:
    with write_tx(engine) as c:
        c.execute(update(devices).where(devices.c.id == device_id).values(**values))


def test_a_device_credential_is_read_once_and_refused_at_once_when_revoked(
    live: Live, device_reads: list[str]
) -> None:
    dev = live.device("known")  # (its enrollment and first report read the row)
    device_reads.clear()
    for _ in range(3):
        r = dev.client.post("/agent/missing", json={"ids": []})
        assert r.status_code == 200, r.text
    assert device_reads == []
    assert live.login().post("/devices/known/revoke").status_code == 200
    r = dev.client.post("/agent/missing", json={"ids": []})
    assert r.status_code == 401, r.text
    assert "revoked" in r.text


def test_an_agents_report_naming_its_unchanged_host_keeps_the_cache(
    live: Live, device_reads: list[str]
) -> None:
    # every agent report carries the hostname: writing it again each time emptied the
    # cache several times a second across a fleet
    dev = live.device("same-name")
    assert dev.client.post("/agent/missing", json={"ids": []}).status_code == 200
    for state in ("syncing", "idle"):
        r = dev.client.post("/agent/config", json={"state": state, "hostname": "same-name"})
        assert r.status_code == 200, r.text
    device_reads.clear()
    assert dev.client.post("/agent/missing", json={"ids": []}).status_code == 200
    assert device_reads == []


def test_an_entry_is_trusted_for_a_bounded_time(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a second server on the same SQLite file (not the supported shape) cannot empty
    # this one's cache: its revocations reach it when the entry runs out
    known = DeviceCredentials(sqlite_engine)
    _device(sqlite_engine)
    authenticate(sqlite_engine, TOKEN, known)
    assert known.get(token_hash(TOKEN)) is not None
    later = time.monotonic() + credentials.KNOWN_SECONDS + 1
    monkeypatch.setattr(credentials.time, "monotonic", lambda: later)
    assert known.get(token_hash(TOKEN)) is None


@pytest.mark.parametrize("status", ["revoked", "rejected", "archived", "replaced"])
def test_a_status_written_by_any_service_ends_what_the_cache_knew(
    sqlite_engine: Engine, status: str
) -> None:
    known = DeviceCredentials(sqlite_engine)
    device_id = _device(sqlite_engine)
    assert authenticate(sqlite_engine, TOKEN, known).id == device_id
    assert known.get(token_hash(TOKEN)) is not None
    _set(sqlite_engine, device_id, status=status)
    assert known.get(token_hash(TOKEN)) is None
    with pytest.raises(AuthError, match=status):
        authenticate(sqlite_engine, TOKEN, known)
    assert known.get(token_hash(TOKEN)) is None  # a refusal is never kept


def test_a_pending_device_approved_is_known_as_active(sqlite_engine: Engine) -> None:
    known = DeviceCredentials(sqlite_engine)
    device_id = _device(sqlite_engine, status="pending")
    assert authenticate(sqlite_engine, TOKEN, known).role == "pending"
    _set(sqlite_engine, device_id, status="active")
    assert authenticate(sqlite_engine, TOKEN, known).role == "active"


def test_a_report_that_writes_no_credential_column_keeps_the_cache(sqlite_engine: Engine) -> None:
    known = DeviceCredentials(sqlite_engine)
    device_id = _device(sqlite_engine)
    authenticate(sqlite_engine, TOKEN, known)
    _set(sqlite_engine, device_id, last_seen=dt.datetime.now(dt.UTC), agent_state={"a": 1})
    assert known.get(token_hash(TOKEN)) is not None


def test_an_answer_read_before_or_during_a_credential_write_is_not_kept(
    sqlite_engine: Engine,
) -> None:
    known = DeviceCredentials(sqlite_engine)
    device_id = _device(sqlite_engine)
    h = token_hash(TOKEN)
    stale = Principal("device", device_id, "device cached", role="active")
    before = known.generation()
    with write_tx(sqlite_engine) as c:
        c.execute(update(devices).where(devices.c.id == device_id).values(status="revoked"))
        # in flight: another thread's read may still see the old row, so nothing is kept
        assert known.generation() is None
        known.keep(h, stale, known.generation())
        assert known.get(h) is None
    known.keep(h, stale, before)  # read before the write began
    assert known.get(h) is None
    with pytest.raises(AuthError, match="revoked"):
        authenticate(sqlite_engine, TOKEN, known)


def test_on_postgresql_every_request_reads_the_row() -> None:
    # two servers share the database there: one's revocation would not reach the other
    known = DeviceCredentials(create_engine("postgresql+psycopg://u@127.0.0.1:1/none"))
    p = Principal("device", "d", "device d", role="active")
    known.keep("h", p, known.generation())
    assert known.get("h") is None


@pytest.mark.parametrize(
    ("statement", "writes"),
    [
        ("UPDATE devices SET status=? WHERE devices.id = ?", True),
        ("UPDATE devices SET credential_hash=?, hostname=? WHERE devices.id = ?", True),
        ('UPDATE "devices" SET "status"=%(status)s WHERE devices.id = %(id_1)s', True),
        ("UPDATE devices SET last_seen=?, agent_state=? WHERE devices.id = ?", False),
        ("update devices set whatever", True),  # not understood: counts
        ("DELETE FROM devices WHERE devices.id = ?", True),
        ("INSERT INTO devices (id, hostname) VALUES (?, ?)", True),
        ("INSERT OR REPLACE INTO devices (id) VALUES (?)", True),
        ("SELECT devices.status FROM devices WHERE devices.credential_hash = ?", False),
        ("UPDATE cvds SET device_id=? WHERE cvds.id = ?", False),
        ("DELETE FROM devices_extra WHERE id = ?", False),
        # what the plain UPDATE's parse does not cover counts
        ("WITH x AS (SELECT 1) UPDATE devices SET last_seen=?", True),
        ("/* a comment */ UPDATE devices SET last_seen=? WHERE devices.id = ?", True),
        ("UPDATE main.devices SET last_seen=? WHERE id = ?", True),
        ("UPDATE devices SET agent_state=(SELECT 1 WHERE 1), status=? WHERE id = ?", True),
        ("INSERT INTO cvds (device_id) SELECT id FROM devices", True),
    ],
)
def test_which_statements_write_credentials(statement: str, writes: bool) -> None:
    assert writes_credentials(statement) is writes
