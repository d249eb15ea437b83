"""The agent's state folder.

    STATE/agent.json     server URL, device id, credential, chunking secret, root,
                         pinned server certificate or CA (mode 0600: it holds a credential),
                         the facts override and the sysfs folder facts are read from
    STATE/status.json    what `lamina agent status` prints
    STATE/cache/         files cache
    STATE/staging/       staged transactions for `lamina agent boot`
    STATE/agent.lock     held (flock) by the one agent process using the folder

Every file is written atomically (temp, fsync, rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.store.keys import ChunkingSecret

#: 2 added ``pinned_is_ca`` and ``insecure`` (a version 1 file reads as both false).
STATE_VERSION = 2


def write_json_atomic(path: Path, doc: Any, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, json.dumps(doc, indent=2, default=str).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class AgentState:
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
    version: int = STATE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``enroll --facts FILE``: merged over the detected facts at every refresh.
    facts: dict[str, Any] = field(default_factory=dict)
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


def state_file(state_dir: Path) -> Path:
    return state_dir / "agent.json"


def save_state(state_dir: Path, st: AgentState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_json_atomic(state_file(state_dir), asdict(st))


def load_state(state_dir: Path) -> AgentState:
    try:
        doc = json.loads(state_file(state_dir).read_text())
    except FileNotFoundError as e:
        raise NotFoundError(
            f"no agent state in {state_dir}: run `lamina agent enroll` first"
        ) from e
    except ValueError as e:
        raise UsageError(f"{state_file(state_dir)} is damaged: {e}") from e
    if doc.get("version") not in (1, STATE_VERSION):
        raise UsageError(f"unsupported agent state version {doc.get('version')!r}")
    doc["version"] = STATE_VERSION
    return AgentState(**doc)


def save_status(state_dir: Path, status: dict[str, Any]) -> None:
    write_json_atomic(state_dir / "status.json", status, mode=0o644)


def load_status(state_dir: Path) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        doc = json.loads((state_dir / "status.json").read_text())
        if isinstance(doc, dict):
            return doc
    return {}


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
