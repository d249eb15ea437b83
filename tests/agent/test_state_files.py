"""The start-up commands' readers of agent.json and status.json (``agent.state_files``,
no pydantic) and the models' loaders (``agent.state``) agree: the same document from
every valid file, a refusal naming the file and the field from every hostile one."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, get_args

import pytest

from lamina.agent import state_files
from lamina.agent.state import (
    AgentState,
    AgentStatus,
    RunState,
    SyncStats,
    load_state,
    load_status,
    save_state,
    save_status,
)
from lamina.errors import IntegrityError, LaminaError, NotFoundError

STATE: dict[str, Any] = {
    "server": "https://lamina:8470",
    "device_id": "dev-1",
    "credential": "lmd_secret",
    "root": "/",
    "chunker_seed": 7,
    "id_key": "00" * 32,
    "min_size": 1,
    "avg_size": 2,
    "max_size": 4,
    "version": 2,
}

#: Values of every JSON type, to put in each field in turn.
VALUES: list[Any] = [None, True, 0, 7, 1.5, 2.0, "", "x", "7", [], ["a"], [1], {}, {"a": 1}]

#: Times the status may hold, valid and not.
TIMES = [
    "2026-01-02T03:04:05Z",
    "2026-01-02T03:04:05.123Z",
    "2026-01-02t03:04:05.123456789+01:00",
    "2026-01-02 03:04:05",
    "2026-01-02T03:04",
    "2026-01-02T03:04:05-00:00",
    "2026-01-02T03:04:05+05:30",
    "2026-01-02T03:04:05-08:00",
    "2026-01-02",
    "1700000000",
    "2026-02-30T00:00:00",
    "2026-01-02T24:00:00",
    "2026-01-02T03:04:05+0100",
    "2026-01-02T03:04:05+05",
    "2026-01-02T03:04:05,5",
    "20260102T030405",
]


def _outcome(read: Any) -> tuple[str, Any]:
    try:
        return "ok", read()
    except LaminaError as e:
        return type(e).__name__, str(e)


def assert_same(tmp_path: Path, name: str, doc: Any) -> tuple[str, Any]:
    """Write ``doc`` as ``name`` and read it both ways: the same document, or the same
    refusal (same class; both name the file)."""
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    if name == "agent.json":
        quick = _outcome(lambda: state_files.state_doc(tmp_path))
        typed = _outcome(lambda: load_state(tmp_path).model_dump(mode="json"))
    else:
        quick = _outcome(lambda: state_files.status_doc(tmp_path))
        typed = _outcome(lambda: load_status(tmp_path).model_dump(mode="json"))
    assert quick[0] == typed[0], (doc, quick, typed)
    if quick[0] == "ok":
        assert quick[1] == typed[1]
        assert list(quick[1]) == list(typed[1])  # the same order: `status --json` prints it
    else:
        assert str(path) in quick[1]
    return quick


def test_the_field_tables_are_the_models() -> None:
    assert list(state_files.AGENT_FIELDS.fields) == list(AgentState.model_fields)
    assert list(state_files.STATUS_FIELDS.fields) == list(AgentStatus.model_fields)


def test_valid_files_read_the_same(tmp_path: Path) -> None:
    full = AgentState(
        **STATE | {"pinned_cert": "PEM", "pinned_is_ca": True, "insecure": True},
        extra={"a": [1, {"b": None}]},
        facts={"cpu": "x"},
        sysfs="/fake",
    )
    for st in (AgentState(**STATE), full):
        save_state(tmp_path, st)
        assert assert_same(tmp_path, "agent.json", st.model_dump(mode="json"))[0] == "ok"
    assert assert_same(tmp_path, "agent.json", STATE | {"version": 1})[0] == "ok"
    status = AgentStatus(
        device_id="d",
        cvd_id="c",
        state="waiting for reboot",
        registration="active",
        policy_version=3,
        last_sync=dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        last_snapshot="s",
        last_error="e",
        last_sync_stats=SyncStats(files=1, bytes=2, files_read=3, uploaded_bytes=4, errors=["x"]),
        progress={"files": 1},
        sync_requested=True,
        staged="tx",
        staged_task="t",
        applied=[{"transaction": "tx", "versions": ["v"]}],
        layers=["v"],
        layer_labels=["l"],
        stream={"root": "r"},
        migrating="m",
        last_stream={"bytes": 1},
        confirmed=["tx"],
    )
    for s in (AgentStatus(), status):
        save_status(tmp_path, s)
        assert assert_same(tmp_path, "status.json", s.model_dump(mode="json"))[0] == "ok"
    # from before versions: the registration status was in ``state``
    old = {"device_id": "d", "state": "pending", "last_sync": None}
    assert assert_same(tmp_path, "status.json", old)[1]["registration"] == "pending"


def test_no_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="lamina agent enroll"):
        state_files.state_doc(tmp_path)
    assert state_files.status_doc(tmp_path) == AgentStatus().model_dump(mode="json")


@pytest.mark.parametrize("raw", ["", "{not json", "[1, 2]", "null", '"x"', "7", "\xff"])
def test_files_that_are_no_json_object_are_refused_both_ways(tmp_path: Path, raw: str) -> None:
    for name in ("agent.json", "status.json"):
        assert assert_same(tmp_path, name, raw)[0] == "IntegrityError"


@pytest.mark.parametrize("field", [*AgentState.model_fields, "token"])
def test_each_agent_field_with_each_json_type(tmp_path: Path, field: str) -> None:
    seen = set()
    for value in VALUES:
        seen.add(assert_same(tmp_path, "agent.json", STATE | {field: value})[0])
    assert "IntegrityError" in seen or field == "version"
    missing = {k: v for k, v in STATE.items() if k != field}
    assert_same(tmp_path, "agent.json", missing)


@pytest.mark.parametrize("field", [*AgentStatus.model_fields, "sync_requestd"])
def test_each_status_field_with_each_json_type(tmp_path: Path, field: str) -> None:
    seen = set()
    values = [*VALUES, *get_args(RunState), *TIMES, [{}], [None]]
    for value in values:
        for doc in ({"version": 1, field: value}, {field: value}):
            seen.add(assert_same(tmp_path, "status.json", doc)[0])
    assert "IntegrityError" in seen


@pytest.mark.parametrize("field", list(SyncStats.model_fields))
def test_each_sync_stats_field_with_each_json_type(tmp_path: Path, field: str) -> None:
    for value in VALUES:
        got = assert_same(tmp_path, "status.json", {"last_sync_stats": {field: value}})
        if got[0] != "ok":
            assert f"last_sync_stats.{field}" in got[1]
    assert_same(tmp_path, "status.json", {"last_sync_stats": {"nope": 1}})


def test_times_are_written_back_as_pydantic_writes_them(tmp_path: Path) -> None:
    valid = [t for t in TIMES if assert_same(tmp_path, "status.json", {"last_sync": t})[0] == "ok"]
    assert len(valid) == 8  # the first eight, each read equal to the model's value
    (tmp_path / "status.json").write_text(json.dumps({"last_sync": "1700000000"}))
    with pytest.raises(IntegrityError, match="last_sync"):
        state_files.status_doc(tmp_path)
