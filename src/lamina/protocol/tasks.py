"""Task kinds, their parameters and task states: the contract of ``/agent/work``.

A task is queued by the server with a kind and its parameters, claimed by the
device's agent, and reported back. Each kind has one parameters model here,
registered in ``PARAMS``: the server validates the parameters when it queues a
task (``params_for``) and the agent again when it reads one, so a task the agent
runs is always one the server could have written.

To add a kind: add a member to ``TaskKind``, a ``TaskParams`` subclass with its
fields, and a ``PARAMS`` entry; then teach the agent's ``Agent.do`` to run it.
An agent that does not know a kind reports the task failed ("unknown task kind").

Version 1 (``PROTOCOL_VERSION``).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lamina.errors import UsageError
from lamina.protocol.schemas import PolicySettings

#: A tree or blob id in hex (64 lowercase digits).
HexId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class TaskKind(StrEnum):
    SYNC = "sync"
    RESTORE = "restore"
    REVERT = "revert"
    LAYER_APPLY = "layer-apply"
    MIGRATE = "migrate"
    # Run by the server itself on its store (``services/store_ops.py``), never by an agent.
    STORE_CHECK = "store-check"
    STORE_GC = "store-gc"
    STORE_STATS = "store-stats"


class TaskState(StrEnum):
    """queued → running → done | failed, or → waiting (staged for the next boot) → done | failed;
    queued and waiting may become cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: A task in one of these states may still be run or applied by its agent.
OPEN_STATES: tuple[TaskState, ...] = (TaskState.QUEUED, TaskState.RUNNING, TaskState.WAITING)
#: States an agent may report (the server decides queued and cancelled).
REPORTABLE_STATES: tuple[TaskState, ...] = (
    TaskState.RUNNING,
    TaskState.DONE,
    TaskState.FAILED,
    TaskState.WAITING,
)


class TaskParams(BaseModel):
    """The parameters of one kind of task. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SyncParams(TaskParams):
    """Upload a snapshot now."""

    #: Why the server asked (a recording's start or end), for the log.
    why: str = Field("", max_length=200)


class RestoreParams(TaskParams):
    """Restore paths of a snapshot in place on the endpoint."""

    snapshot: str = Field(max_length=64)
    root: HexId
    paths: list[str] = Field(min_length=1, max_length=1000)
    overwrite: bool = False


class RevertParams(TaskParams):
    """Stage the endpoint's return to a snapshot (or, with ``dry_run``, only plan it)."""

    snapshot: str = Field(max_length=64)
    root: HexId
    system_only: bool = True
    dry_run: bool = False
    #: The policy the snapshot was taken under: only what it protected is removed.
    policy: PolicySettings | None = None
    #: Paths the snapshot's scan could not read: never touched.
    error_paths: list[str] = Field(default_factory=list)
    #: How many scan errors there were; more than ``error_paths`` lists → remove nothing.
    scan_errors: int = Field(0, ge=0)


#: What a delivery expects at a path: None (absent), ``["file", size, digest]``,
#: ``["symlink", target hex]`` or ``[type]``.
Expected = list[str | int] | None


class LayerApplyParams(TaskParams):
    """Stage a layer delivery: a delta tree and the paths to remove, applied at the next boot."""

    delta: HexId
    removes: list[str] = Field(default_factory=list)
    expect: dict[str, Expected] = Field(default_factory=dict)
    #: The dpkg status file the merge started from: chunk ids in hex and hole sizes.
    dpkg_base: list[str | int] | None = None
    never_override: list[str] = Field(default_factory=list)
    #: The layer version ids the endpoint runs once applied, and their labels.
    versions: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)


class MigrateParams(TaskParams):
    """Stage a CVD's snapshot onto this (new) machine: the boot set now, the user data
    streamed after the reboot (``lamina cvd migrate``, ``restore-system``), or a system
    laid down from layers (mode ``system``: ``cvd provision``, ``cvd migrate-os``)."""

    #: The snapshot migrated from (none for a system composed from layers).
    snapshot: str | None = Field(None, max_length=64)
    root: HexId
    #: full, apps-data, data, or system.
    mode: str = Field("full", max_length=20)
    #: The driver packs laid over the system, as ``NAME:VERSION`` (for the report).
    packs: list[str] = Field(default_factory=list, max_length=1000)
    #: The CVD's policy: what is user data and what is system.
    policy: PolicySettings | None = None
    #: The hardware-bound paths (rule set ``migration.hardware_bound``): kept from this machine.
    hardware_bound: list[str] = Field(default_factory=list, max_length=10_000)
    #: The CVD comes back onto its own (repaired) device.
    restore_system: bool = False
    #: The storage drivers differ from the old machine's: rebuild the initramfs at boot.
    rebuild_initramfs: bool = False
    #: The layer versions the endpoint runs once applied, and their labels (None: unchanged).
    versions: list[str] | None = None
    labels: list[str] = Field(default_factory=list)
    #: apps-data with ``--base``: the base layer (``NAME:VERSION``) the system becomes; ``root``
    #: is then that base with the CVD's layers and applications laid over, staged as mode
    #: ``system`` stages, and the user data streams from ``stream_root`` (the snapshot).
    base: str | None = Field(None, max_length=300)
    stream_root: HexId | None = None
    #: apps-data without ``--base``: the CVD's user-installed packages (``name[:arch]``),
    #: as the server told them from its layers; the agent carries these only (None: an
    #: older server, which let the agent carry every package this machine lacks).
    user_packages: list[str] | None = Field(None, max_length=100_000)


class StoreCheckParams(TaskParams):
    """Verify the server's store (``lamina store check``): structure, and with
    ``read_data`` every blob read, decrypted and hashed again."""

    read_data: bool = False


class StoreGcParams(TaskParams):
    """Collect the store's garbage (``lamina store gc``); ``dry_run`` only reports what
    it would free."""

    dry_run: bool = True
    #: Packs left by interrupted writes are removed once older than this (seconds; at
    #: least 10 minutes, so that a pack still being written is never taken for one).
    orphan_grace: int = Field(3600, ge=600, le=366 * 86400)


class StoreStatsParams(TaskParams):
    """Count the store's packs, blobs and bytes (``lamina store stats``)."""


#: The kinds the server runs itself, on its store: no agent ever claims one.
SERVER_KINDS: tuple[TaskKind, ...] = (
    TaskKind.STORE_CHECK,
    TaskKind.STORE_GC,
    TaskKind.STORE_STATS,
)

PARAMS: dict[TaskKind, type[TaskParams]] = {
    TaskKind.SYNC: SyncParams,
    TaskKind.RESTORE: RestoreParams,
    TaskKind.REVERT: RevertParams,
    TaskKind.LAYER_APPLY: LayerApplyParams,
    TaskKind.MIGRATE: MigrateParams,
    TaskKind.STORE_CHECK: StoreCheckParams,
    TaskKind.STORE_GC: StoreGcParams,
    TaskKind.STORE_STATS: StoreStatsParams,
}

#: Parameters naming a tree the device may read through ``/blobs/read`` while its task is open.
DELIVERED_TREES: dict[TaskKind, str] = {
    TaskKind.RESTORE: "root",
    TaskKind.REVERT: "root",
    TaskKind.LAYER_APPLY: "delta",
    TaskKind.MIGRATE: "root",
}


def params_for(kind: str, raw: TaskParams | Mapping[str, object] | None) -> TaskParams:
    """The validated parameters of a task of ``kind``.

    Raises ``UsageError`` naming the kind and the field for an unknown kind or
    parameters its model refuses (the agent reports such a task failed).
    """
    try:
        model = PARAMS[TaskKind(kind)]
    except ValueError:
        raise UsageError(
            f"unknown task kind {kind!r} (known: {', '.join(k.value for k in TaskKind)})"
        ) from None
    if isinstance(raw, model):
        return raw
    if isinstance(raw, TaskParams):
        raise UsageError(f"a {kind} task cannot carry {type(raw).__name__}")
    try:
        return model.model_validate(dict(raw or {}))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "params"
        raise UsageError(f"malformed parameters of a {kind} task: {where}: {first['msg']}") from e
