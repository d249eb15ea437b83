"""The agent's state folder: agent.json and status.json are typed, versioned and validated."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from lamina.agent.state import (
    STATE_VERSION,
    AgentState,
    AgentStatus,
    SyncStats,
    load_state,
    load_status,
    record_boot,
    save_state,
    save_status,
)
from lamina.errors import IntegrityError, NotFoundError, UsageError

STATE = {
    "server": "https://lamina:8470",
    "device_id": "dev-1",
    "credential": "lmd_secret",
    "root": "/",
    "chunker_seed": 7,
    "id_key": "00" * 32,
    "min_size": 1,
    "avg_size": 2,
    "max_size": 4,
    "pinned_cert": None,
}


def _write(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_agent_json_round_trips_and_reads_version_1(tmp_path: Path) -> None:
    st = AgentState(**STATE, pinned_is_ca=True)  # type: ignore[arg-type]
    save_state(tmp_path, st)
    assert load_state(tmp_path) == st
    assert (tmp_path / "agent.json").stat().st_mode & 0o777 == 0o600
    _write(tmp_path / "agent.json", {**STATE, "version": 1})
    old = load_state(tmp_path)
    assert (old.version, old.pinned_is_ca, old.insecure) == (STATE_VERSION, False, False)


@pytest.mark.parametrize(
    ("doc", "error", "why"),
    [
        ("{not json", IntegrityError, "not JSON"),
        ([1, 2], IntegrityError, "expected a JSON object"),
        ({**STATE, "version": 9}, UsageError, "unsupported agent state version 9"),
        ({**STATE, "version": 2, "credential": None}, IntegrityError, "credential"),
        ({**STATE, "version": 2, "chunker_seed": "seven"}, IntegrityError, "chunker_seed"),
        ({**STATE, "version": 2, "token": "x"}, IntegrityError, "token"),
        ({k: v for k, v in STATE.items() if k != "root"} | {"version": 2}, IntegrityError, "root"),
    ],
)
def test_a_bad_agent_json_is_a_clear_error_naming_the_file_and_field(
    tmp_path: Path, doc: object, error: type[Exception], why: str
) -> None:
    path = tmp_path / "agent.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(error, match=why) as e:
        load_state(tmp_path)
    assert str(path) in str(e.value)


def test_no_agent_json_says_to_enroll(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="lamina agent enroll"):
        load_state(tmp_path)


def test_status_json_round_trips(tmp_path: Path) -> None:
    assert load_status(tmp_path) == AgentStatus()  # none yet
    status = AgentStatus(
        device_id="dev-1",
        state="syncing",
        last_sync=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        last_sync_stats=SyncStats(files=3, errors=["etc/shadow: permission denied"]),
        progress={"files": 10, "phase": "scanning"},
    )
    save_status(tmp_path, status)
    assert load_status(tmp_path) == status
    assert json.loads((tmp_path / "status.json").read_text())["version"] == 1


def test_a_status_json_from_before_versions_is_read(tmp_path: Path) -> None:
    """Older agents wrote the registration status into ``state`` and had no version."""
    _write(
        tmp_path / "status.json",
        {"device_id": "d", "cvd_id": None, "state": "pending", "last_sync": None},
    )
    st = load_status(tmp_path)
    assert (st.state, st.registration, st.version) == ("idle", "pending", 1)
    _write(tmp_path / "status.json", {"state": "waiting for reboot", "staged": "tx1"})
    assert load_status(tmp_path).state == "waiting for reboot"


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"version": 1, "state": "dancing"}, "state"),
        ({"version": 1, "staged": 5}, "staged"),
        ({"version": 1, "sync_requestd": True}, "sync_requestd"),
        ({"version": 2}, "version"),
        ({"version": 1, "last_sync_stats": {"files": "many"}}, "last_sync_stats.files"),
    ],
)
def test_a_bad_status_json_is_a_clear_error(tmp_path: Path, doc: object, why: str) -> None:
    _write(tmp_path / "status.json", doc)
    with pytest.raises(IntegrityError, match=why):
        load_status(tmp_path)


def test_a_status_field_is_validated_when_the_agent_sets_it() -> None:
    status = AgentStatus()
    with pytest.raises(ValueError, match="state"):
        status.state = "dancing"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="stagd"):
        status.stagd = "tx"  # type: ignore[attr-defined]


def test_record_boot_clears_the_staged_transaction_and_asks_for_a_sync(tmp_path: Path) -> None:
    save_status(
        tmp_path,
        AgentStatus(state="waiting for reboot", staged="tx1", staged_task="t1", layers=["v0"]),
    )
    applied: list[dict[str, object]] = [
        {"transaction": "tx1", "kind": "layers", "versions": ["v1", "v2"], "labels": ["a:1"]}
    ]
    record_boot(tmp_path, applied)  # type: ignore[arg-type]
    st = load_status(tmp_path)
    assert (st.state, st.staged, st.staged_task, st.sync_requested) == ("idle", None, "t1", True)
    assert (st.layers, st.layer_labels, st.applied) == (["v1", "v2"], ["a:1"], applied)
    record_boot(
        tmp_path, [{"transaction": "tx2", "kind": "layers", "versions": ["v9"], "error": "x"}]
    )
    assert load_status(tmp_path).layers == ["v1", "v2"]  # a failed apply changes no layer
