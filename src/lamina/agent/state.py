"""The agent's state folder.

    STATE/agent.json     ``AgentState``: server URL, device id, credential, chunking secret,
                         root, pinned server certificate or CA (mode 0600: a credential),
                         the facts override and the sysfs folder facts are read from
    STATE/status.json    ``AgentStatus``: what `lamina agent status` prints
    STATE/cache/         files cache
    STATE/staging/       staged transactions for `lamina agent boot`
    STATE/agent.lock     held (flock) by the one agent process using the folder

Every file is written atomically (temp, fsync, rename) and validated where it is
read: a damaged one is an ``IntegrityError`` naming the file and the field. The
rules are ``state_files``' (the standard-library readers the start-up commands use);
these models add the typed objects the agent works with and write the files.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from lamina.agent.state_files import (
    STATE_VERSION,
    STATUS_VERSION,
    RunState,
    StateLock,
    state_doc,
    state_file,
    status_doc,
    status_file,
    write_json_atomic,
)
from lamina.errors import IntegrityError
from lamina.store.chunking import ChunkingSecret

__all__ = [
    "STATE_VERSION",
    "STATUS_VERSION",
    "AgentState",
    "AgentStatus",
    "RunState",
    "StateLock",
    "SyncStats",
    "has_credential",
    "load_state",
    "load_status",
    "record_boot",
    "save_state",
    "save_status",
    "state_file",
    "status_file",
    "write_json_atomic",
]


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


def _invalid(path: Path, e: ValidationError) -> IntegrityError:
    first = e.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "the file"
    return IntegrityError(f"{path} is damaged: {where}: {first['msg']}")


def save_state(state_dir: Path, st: AgentState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_json_atomic(state_file(state_dir), st.model_dump(mode="json"))


def load_state(state_dir: Path) -> AgentState:
    """``agent.json``, validated by ``state_files.state_doc`` (the start-up commands'
    reader, without pydantic): a version 1 file reads as version 2 without the CA and
    insecure flags; any other version, a missing or unknown field is refused."""
    try:
        return AgentState.model_validate(state_doc(state_dir))
    except ValidationError as e:
        raise _invalid(state_file(state_dir), e) from e


def save_status(state_dir: Path, status: AgentStatus) -> None:
    write_json_atomic(status_file(state_dir), status.model_dump(mode="json"), mode=0o644)


def load_status(state_dir: Path) -> AgentStatus:
    """``status.json``, validated by ``state_files.status_doc`` (a fresh status if there
    is none yet)."""
    try:
        return AgentStatus.model_validate(status_doc(state_dir))
    except ValidationError as e:
        raise _invalid(status_file(state_dir), e) from e


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


def has_credential(state_dir: Path) -> bool:
    """Whether the folder already holds an enrollment (re-enrolling would replace it)."""
    try:
        doc = json.loads(state_file(state_dir).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(doc, dict) and bool(doc.get("credential"))
