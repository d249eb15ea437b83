"""The agent's state files read with the standard library alone: what runs at boot.

``lamina agent status`` and ``lamina agent boot`` start on every endpoint (at boot,
in monitoring scripts); building ``agent.state``'s pydantic models was 85% of their
start-up. These readers apply the same rules to ``agent.json`` and ``status.json``
(versions, the version-1 upgrades, every field's type, no unknown field) and return
what the models' ``model_dump(mode="json")`` would: the pydantic loaders call them
first, so a file one refuses the other refuses too (tests/agent/test_state_files.py
holds them equal on valid and hostile files). Types are strict: JSON's own types,
no numbers in strings, no 1 for true.

The writers (``save_state``, ``save_status``, ``record_boot``) stay with the models.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal, get_args

from lamina.errors import ConflictError, IntegrityError, NotFoundError, UsageError
from lamina.store.atomic import write_atomic

#: 2 added ``pinned_is_ca`` and ``insecure`` (a version 1 file reads as both false).
STATE_VERSION: Final = 2
#: 1: the first typed ``status.json``. A file without ``version`` (older agents) is
#: read as version 1; its ``state`` held the registration status then.
STATUS_VERSION: Final = 1
#: What the agent is doing (``status.json``'s ``state``).
RunState = Literal[
    "idle",
    "syncing",
    "error",
    "waiting for reboot",
    "boot not confirmed",
    "streaming user data",
]
RUN_STATES: Final = get_args(RunState)


def state_file(state_dir: Path) -> Path:
    return state_dir / "agent.json"


def status_file(state_dir: Path) -> Path:
    return state_dir / "status.json"


def write_json_atomic(path: Path, doc: Any, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(doc, indent=2, default=str).encode(), mode)


class _Bad(Exception):
    """A field that breaks its rule: ``where`` (dotted) and what was wrong."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


#: A field's check: the value read -> the value as the model dumps it; raises ValueError.
Check = Callable[[Any], Any]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _str(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, found {_kind(value)}")
    return value


def _int(value: Any) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, found {_kind(value)}")
    return value


def _bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, found {_kind(value)}")
    return value


def _object(value: Any) -> Any:
    """A JSON object (any JSON values inside: whatever ``json.loads`` gave is JSON)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, found {_kind(value)}")
    return value


def _list_of(item: Check) -> Check:
    def check(value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, found {_kind(value)}")
        return [item(v) for v in value]

    return check


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _one_of(*allowed: Any) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not type(allowed[0]) or value not in allowed:
            raise ValueError(f"expected one of {', '.join(map(repr, allowed))}, found {value!r}")
        return value

    return check


_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"([Zz]|[+-]\d{2}:\d{2})?"
)


def _timestamp(value: Any) -> Any:
    """An RFC 3339 time (``T`` or a space; seconds and offset optional), written back as
    pydantic writes a datetime: ``...T12:00:00[.ffffff][Z|+HH:MM]``."""
    m = _TIMESTAMP.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"expected a date and time (RFC 3339), found {value!r}")
    y, mo, d, h, mi, s, frac, off = m.groups()
    try:
        when = dt.datetime(
            int(y),
            int(mo),
            int(d),
            int(h),
            int(mi),
            int(s or 0),
            int((frac or "0")[:6].ljust(6, "0")),
        )
        if off and off not in "Zz":
            sign = 1 if off[0] == "+" else -1
            delta = dt.timedelta(hours=int(off[1:3]), minutes=int(off[4:6]))
            when = when.replace(tzinfo=dt.timezone(sign * delta))
    except ValueError as e:
        raise ValueError(f"expected a date and time (RFC 3339), found {value!r}") from e
    text = when.strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{when.microsecond:06d}" if when.microsecond else ""
    )
    if off is None:
        return text
    offset = when.utcoffset()
    if off in "Zz" or not offset:
        return text + "Z"
    return text + when.strftime("%z")[:3] + ":" + when.strftime("%z")[3:]


class _Fields:
    """A model's fields in order: name -> (check, default); no default: required."""

    REQUIRED: Final = object()

    def __init__(self, fields: dict[str, tuple[Check, Any]]) -> None:
        self.fields = fields

    def read(self, doc: dict[str, Any], where: str = "") -> dict[str, Any]:
        for name in doc:
            if name not in self.fields:
                raise _Bad(f"{where}{name}", "not a known field (extra fields are not permitted)")
        out: dict[str, Any] = {}
        for name, (check, default) in self.fields.items():
            if name not in doc:
                if default is self.REQUIRED:
                    raise _Bad(f"{where}{name}", "field required")
                out[name] = default() if callable(default) else default
                continue
            try:
                out[name] = check(doc[name])
            except _Bad as e:  # inside a nested object
                raise _Bad(f"{where}{name}.{e.where}", e.why) from None
            except ValueError as e:
                raise _Bad(f"{where}{name}", str(e)) from None
        return out


_R = _Fields.REQUIRED

#: ``agent.json`` version 2, in ``AgentState``'s field order.
AGENT_FIELDS = _Fields(
    {
        "server": (_str, _R),
        "device_id": (_str, _R),
        "credential": (_str, _R),
        "root": (_str, _R),
        "chunker_seed": (_int, _R),
        "id_key": (_str, _R),
        "min_size": (_int, _R),
        "avg_size": (_int, _R),
        "max_size": (_int, _R),
        "pinned_cert": (_optional(_str), None),
        "pinned_is_ca": (_bool, False),
        "insecure": (_bool, False),
        "version": (_one_of(STATE_VERSION), STATE_VERSION),
        "extra": (_object, dict),
        "facts": (_object, dict),
        "sysfs": (_str, "/sys"),
    }
)

_SYNC_STATS = _Fields(
    {
        "files": (_int, 0),
        "bytes": (_int, 0),
        "files_read": (_int, 0),
        "uploaded_bytes": (_int, 0),
        "errors": (_list_of(_str), list),
    }
)


def _sync_stats(value: Any) -> Any:
    return _SYNC_STATS.read(_object(value))


_OPT_STR = _optional(_str)
_OPT_STRS = _optional(_list_of(_str))
_OPT_OBJECT = _optional(_object)

#: ``status.json`` version 1, in ``AgentStatus``'s field order.
STATUS_FIELDS = _Fields(
    {
        "version": (_one_of(STATUS_VERSION), STATUS_VERSION),
        "device_id": (_OPT_STR, None),
        "cvd_id": (_OPT_STR, None),
        "state": (_one_of(*RUN_STATES), "idle"),
        "registration": (_OPT_STR, None),
        "policy_version": (_optional(_int), None),
        "last_sync": (_optional(_timestamp), None),
        "last_snapshot": (_OPT_STR, None),
        "last_error": (_OPT_STR, None),
        "last_sync_stats": (_optional(_sync_stats), None),
        "progress": (_object, dict),
        "sync_requested": (_bool, False),
        "staged": (_OPT_STR, None),
        "staged_task": (_OPT_STR, None),
        "applied": (_optional(_list_of(_object)), None),
        "layers": (_OPT_STRS, None),
        "layer_labels": (_list_of(_str), list),
        "stream": (_OPT_OBJECT, None),
        "migrating": (_OPT_STR, None),
        "last_stream": (_OPT_OBJECT, None),
        "confirmed": (_OPT_STRS, None),
    }
)


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if absent; ``IntegrityError`` if not one."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise IntegrityError(f"{path} is damaged: not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise IntegrityError(
            f"{path} is damaged: expected a JSON object, found {type(doc).__name__}"
        )
    return doc


def _checked(path: Path, fields: _Fields, doc: dict[str, Any]) -> dict[str, Any]:
    try:
        return fields.read(doc)
    except _Bad as e:
        raise IntegrityError(f"{path} is damaged: {e.where}: {e.why}") from None


def state_doc(state_dir: Path) -> dict[str, Any]:
    """``agent.json``, validated, as ``AgentState.model_dump(mode="json")``: a version 1
    file reads as version 2 without the CA and insecure flags; any other version, a
    missing or unknown field is refused."""
    path = state_file(state_dir)
    doc = _read_json(path)
    if doc is None:
        raise NotFoundError(f"no agent state in {state_dir}: run `lamina agent enroll` first")
    version = doc.get("version")
    if isinstance(version, bool) or version not in (1, STATE_VERSION):
        raise UsageError(
            f"{path}: unsupported agent state version {version!r} "
            f"(this agent reads 1 and {STATE_VERSION})"
        )
    return _checked(path, AGENT_FIELDS, {**doc, "version": STATE_VERSION})


def status_doc(state_dir: Path) -> dict[str, Any]:
    """``status.json``, validated, as ``AgentStatus.model_dump(mode="json")`` (a fresh
    status if there is none yet; a file from before versions is upgraded)."""
    path = status_file(state_dir)
    doc = _read_json(path)
    if doc is None:
        doc = {}
    elif "version" not in doc:  # written before the status had a version
        doc = dict(doc, version=STATUS_VERSION)
        if doc.get("state") not in RUN_STATES:
            doc["registration"] = doc.get("registration") or doc.get("state")
            doc["state"] = "idle"
    return _checked(path, STATUS_FIELDS, doc)


class StateLock:
    """An exclusive ``flock`` on ``STATE/agent.lock``: one agent per state folder.

    The kernel drops the lock when the process ends, however it ends: a crashed
    agent never leaves a stale lock behind.
    """

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / "agent.lock"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(self._fd)
            raise ConflictError(
                f"another lamina agent is using the state folder {state_dir}; "
                "stop it first (one agent per state folder)"
            ) from e

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
