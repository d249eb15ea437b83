"""The agent's state folder.

    STATE/agent.json     ``AgentState``: server URL, device id, credential, chunking secret,
                         root, pinned server certificate or CA (mode 0600: a credential),
                         the facts override and the sysfs folder facts are read from
    STATE/status.json    ``AgentStatus``: what `lamina agent status` prints
    STATE/cache/         files cache
    STATE/staging/       staged transactions for `lamina agent boot`
    STATE/agent.lock     held (flock) by the one agent process using the folder

Every file is written atomically (temp, fsync, rename) and validated where it is
read: a damaged one is an ``IntegrityError`` naming the file and the field.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from lamina.errors import ConflictError, IntegrityError, NotFoundError, UsageError
from lamina.store.atomic import write_atomic
from lamina.store.chunking import ChunkingSecret

#: 2 added ``pinned_is_ca`` and ``insecure`` (a version 1 file reads as both false).
STATE_VERSION: Final = 2


def write_json_atomic(path: Path, doc: Any, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(doc, indent=2, default=str).encode(), mode)


class AgentState(BaseModel):
    """``agent.json``: who this agent is and how it reaches its server (version 2)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    server: str
    device_id: str
    credential: str
    root: str
    chunker_seed: int
    id_key: str
    min_size: int
    avg_size: int
    max_size: int
    pinned_cert: str | None = None
    #: ``pinned_cert`` is a CA (``--ca-cert``: host names are checked), not the server's own.
    pinned_is_ca: bool = False
    #: Plain http to a host that is not loopback was allowed at enrollment (``--insecure``).
    insecure: bool = False
    version: Literal[2] = STATE_VERSION
    extra: dict[str, JsonValue] = Field(default_factory=dict)
    #: ``enroll --facts FILE``: merged over the detected facts at every refresh.
    facts: dict[str, JsonValue] = Field(default_factory=dict)
    #: Where the hardware facts are read (``/sys`` on a real machine).
    sysfs: str = "/sys"

    @property
    def chunking(self) -> ChunkingSecret:
        return ChunkingSecret(
            self.chunker_seed,
            bytes.fromhex(self.id_key),
            self.min_size,
            self.avg_size,
            self.max_size,
        )


#: What the agent is doing (``status.json``'s ``state``).
RunState = Literal[
    "idle",
    "syncing",
    "error",
    "waiting for reboot",
    "boot not confirmed",
    "streaming user data",
]
#: 1: the first typed ``status.json``. A file without ``version`` (older agents) is
#: read as version 1; its ``state`` held the registration status then.
STATUS_VERSION: Final = 1


class SyncStats(BaseModel):
    """The last upload's figures, as ``lamina agent status --json`` shows them."""

    model_config = ConfigDict(extra="forbid")

    files: int = 0
    bytes: int = 0
    files_read: int = 0
    uploaded_bytes: int = 0
    #: The first scan errors (``PATH: reason``), at most 20.
    errors: list[str] = Field(default_factory=list)


class AgentStatus(BaseModel):
    """``status.json``: what the agent is doing and what it staged; the agent alone writes it.

    Every change goes through ``Agent._save`` or ``record_boot`` and is written whole
    and atomically; a field that is not one of these is refused.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    version: Literal[1] = STATUS_VERSION
    device_id: str | None = None
    cvd_id: str | None = None
    state: RunState = "idle"
    #: The device's status on the server: pending, active, revoked...
    registration: str | None = None
    policy_version: int | None = None
    last_sync: dt.datetime | None = None
    last_snapshot: str | None = None
    last_error: str | None = None
    last_sync_stats: SyncStats | None = None
    #: The running upload's progress (files, bytes, phase...), empty when idle.
    progress: dict[str, JsonValue] = Field(default_factory=dict)
    #: The next cycle uploads even if not due (set after a boot applied something).
    sync_requested: bool = False
    #: The staged transaction not applied yet, and the task that staged it.
    staged: str | None = None
    staged_task: str | None = None
    #: What the last boot applied (one entry per transaction; ``error`` if it failed),
    #: until the agent reports it on ``staged_task``.
    applied: list[dict[str, JsonValue]] | None = None
    #: The layer versions the endpoint runs (after a boot applied a delivery) and their labels.
    layers: list[str] | None = None
    layer_labels: list[str] = Field(default_factory=list)
    #: A migration's user data still streaming in after its boot set was applied
    #: (root tree, snapshot, task, progress); None when nothing streams.
    stream: dict[str, JsonValue] | None = None
    #: The migrate task this machine is becoming the CVD of: no sync until it is done.
    migrating: str | None = None
    #: The last stream's figures, once done.
    last_stream: dict[str, JsonValue] | None = None
    #: The transactions whose boot the agent confirmed last.
    confirmed: list[str] | None = None


def state_file(state_dir: Path) -> Path:
    return state_dir / "agent.json"


def status_file(state_dir: Path) -> Path:
    return state_dir / "status.json"


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


def _invalid(path: Path, e: ValidationError) -> IntegrityError:
    first = e.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "the file"
    return IntegrityError(f"{path} is damaged: {where}: {first['msg']}")


def save_state(state_dir: Path, st: AgentState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_json_atomic(state_file(state_dir), st.model_dump(mode="json"))


def load_state(state_dir: Path) -> AgentState:
    """``agent.json``, validated: a version 1 file reads as version 2 without the CA
    and insecure flags; any other version, a missing or unknown field is refused."""
    path = state_file(state_dir)
    doc = _read_json(path)
    if doc is None:
        raise NotFoundError(f"no agent state in {state_dir}: run `lamina agent enroll` first")
    if doc.get("version") not in (1, STATE_VERSION):
        raise UsageError(
            f"{path}: unsupported agent state version {doc.get('version')!r} "
            f"(this agent reads 1 and {STATE_VERSION})"
        )
    try:
        return AgentState.model_validate({**doc, "version": STATE_VERSION})
    except ValidationError as e:
        raise _invalid(path, e) from e


def save_status(state_dir: Path, status: AgentStatus) -> None:
    write_json_atomic(status_file(state_dir), status.model_dump(mode="json"), mode=0o644)


def load_status(state_dir: Path) -> AgentStatus:
    """``status.json``, validated (a fresh status if there is none yet)."""
    path = status_file(state_dir)
    doc = _read_json(path)
    if doc is None:
        return AgentStatus()
    if "version" not in doc:  # written before the status had a version
        doc = dict(doc, version=STATUS_VERSION)
        if doc.get("state") not in get_args(RunState):
            doc["registration"] = doc.get("registration") or doc.get("state")
            doc["state"] = "idle"
    try:
        return AgentStatus.model_validate(doc)
    except ValidationError as e:
        raise _invalid(path, e) from e


def record_boot(state_dir: Path, applied: list[dict[str, Any]]) -> AgentStatus:
    """After ``agent boot`` applied staged transactions: nothing is staged any more, the
    applied layers are the ones the endpoint runs, a migration's user data is set to
    stream in, and the next cycle uploads at once."""
    status = load_status(state_dir)
    status.state = "idle"
    status.staged = None
    status.applied = applied
    for a in applied:
        if a.get("kind") == "migration":  # rolled back: nothing streams in
            stream = a.get("stream")
            ok = not a.get("error") and isinstance(stream, dict)
            status.stream = {**stream, "mode": a.get("mode")} if ok else None  # type: ignore[dict-item]
        if a.get("kind") in ("layers", "migration") and not a.get("error") and "versions" in a:
            status.layers = [str(v) for v in a.get("versions") or []]
            status.layer_labels = [str(v) for v in a.get("labels") or []]
    status.sync_requested = True
    save_status(state_dir, status)
    return status


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


def has_credential(state_dir: Path) -> bool:
    """Whether the folder already holds an enrollment (re-enrolling would replace it)."""
    try:
        doc = json.loads(state_file(state_dir).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(doc, dict) and bool(doc.get("credential"))
