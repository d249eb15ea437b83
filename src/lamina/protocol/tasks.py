"""Task kinds, their parameters and task states: the contract of ``/agent/work``.

A task is queued by the server with a kind and its parameters, claimed by the
device's agent, and reported back. Each kind has one parameters model here,
registered in ``PARAMS``: the server validates the parameters when it queues a
task (``params_for``) and the agent again when it reads one, so a task the agent
runs is always one the server could have written.

``TaskPublic.params`` and ``WorkItem.params`` are a union of these models
discriminated by the task's ``kind`` (a callable discriminator, not a ``kind`` field
inside the parameters: the parameters' JSON stays what agents of the previous
version accept, since their models refuse unknown fields).

To add a kind: add a member to ``TaskKind``, a ``TaskParams`` subclass with its
fields and its ``kind``, a ``PARAMS`` entry and a member of ``AnyTaskParams``; then
teach the agent's ``Agent.do`` to run it.
An agent that does not know a kind reports the task failed ("unknown task kind").

Version 1 (``PROTOCOL_VERSION``). The kinds and states are ``task_kinds``' (no
pydantic model: an agent whose server queued no work builds none of these).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from lamina.errors import UsageError
from lamina.protocol.base import SmallMap, Strict
from lamina.protocol.policies import PolicySettings
from lamina.protocol.task_kinds import TaskKind as TaskKind
from lamina.protocol.task_kinds import TaskState as TaskState

#: A tree or blob id in hex (64 lowercase digits).
HexId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


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

    #: The kind of task these parameters belong to (not a field: not in the JSON).
    kind: ClassVar[TaskKind]


class SyncParams(TaskParams):
    """Upload a snapshot now."""

    kind: ClassVar[TaskKind] = TaskKind.SYNC

    #: Why the server asked (a recording's start or end), for the log.
    why: str = Field("", max_length=200)


class RestoreParams(TaskParams):
    """Restore paths of a snapshot in place on the endpoint."""

    kind: ClassVar[TaskKind] = TaskKind.RESTORE

    snapshot: str = Field(max_length=64)
    root: HexId
    paths: list[str] = Field(min_length=1, max_length=1000)
    overwrite: bool = False


class RevertParams(TaskParams):
    """Stage the endpoint's return to a snapshot (or, with ``dry_run``, only plan it)."""

    kind: ClassVar[TaskKind] = TaskKind.REVERT

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

    kind: ClassVar[TaskKind] = TaskKind.LAYER_APPLY

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

    kind: ClassVar[TaskKind] = TaskKind.MIGRATE

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

    kind: ClassVar[TaskKind] = TaskKind.STORE_CHECK
    read_data: bool = False


class StoreGcParams(TaskParams):
    """Collect the store's garbage (``lamina store gc``); ``dry_run`` only reports what
    it would free."""

    kind: ClassVar[TaskKind] = TaskKind.STORE_GC
    dry_run: bool = True
    #: Packs left by interrupted writes are removed once older than this (seconds; at
    #: least 10 minutes, so that a pack still being written is never taken for one).
    orphan_grace: int = Field(3600, ge=600, le=366 * 86400)


class StoreStatsParams(TaskParams):
    """Count the store's packs, blobs and bytes (``lamina store stats``)."""

    kind: ClassVar[TaskKind] = TaskKind.STORE_STATS


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
    if raw is not None and not isinstance(raw, Mapping):
        raise UsageError(f"malformed parameters of a {kind} task: not an object")
    try:
        return model.model_validate(dict(raw or {}))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "params"
        raise UsageError(f"malformed parameters of a {kind} task: {where}: {first['msg']}") from e


def _kind_of(v: object) -> str | None:
    """The union's tag: the kind of a parameters model. ``TaskPublic`` and ``WorkItem``
    read raw parameters into their task's kind's model before the union sees them."""
    return v.kind.value if isinstance(v, TaskParams) else None


#: The parameters of any task, discriminated by the task's kind.
AnyTaskParams = Annotated[
    Annotated[SyncParams, Tag(TaskKind.SYNC.value)]
    | Annotated[RestoreParams, Tag(TaskKind.RESTORE.value)]
    | Annotated[RevertParams, Tag(TaskKind.REVERT.value)]
    | Annotated[LayerApplyParams, Tag(TaskKind.LAYER_APPLY.value)]
    | Annotated[MigrateParams, Tag(TaskKind.MIGRATE.value)]
    | Annotated[StoreCheckParams, Tag(TaskKind.STORE_CHECK.value)]
    | Annotated[StoreGcParams, Tag(TaskKind.STORE_GC.value)]
    | Annotated[StoreStatsParams, Tag(TaskKind.STORE_STATS.value)],
    Discriminator(
        _kind_of,
        custom_error_type="task_params",
        custom_error_message="the parameters were not read against the task's kind",
    ),
]


class _OfKind(BaseModel):
    """A task's kind, and its subclasses' ``params`` read into that kind's model
    (``params_for``): a malformed parameter, or an unknown kind, is a ``UsageError``
    naming the kind and the field, raised as it is (not wrapped in a ``ValidationError``)."""

    kind: TaskKind

    #: ``params=None`` stays None (``TaskPublic``) instead of meaning "no parameters".
    _none_shown: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _params_of_kind(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "kind" in data:
            if cls._none_shown and data.get("params") is None:
                return data
            data = {**data, "params": params_for(str(data["kind"]), data.get("params"))}
        return data


class TaskPublic(_OfKind):
    """A task as the API shows it. ``params`` is None for a stored task whose parameters no
    longer read (changed outside Lamina): the server refuses it at the claim, and its
    ``message`` then says why; the row keeps the parameters as they were."""

    params: AnyTaskParams | None
    _none_shown: ClassVar[bool] = True

    id: str
    state: TaskState
    progress: int
    message: str
    cvd_id: str | None
    device_id: str | None
    result: dict[str, Any]
    created_by: str
    created: dt.datetime
    started: dt.datetime | None
    finished: dt.datetime | None


class WorkItem(_OfKind):
    """A task the server hands its device's agent (``GET /agent/work``)."""

    params: AnyTaskParams
    task_id: str


def work_item(raw: object) -> WorkItem:
    """A work item as the agent reads it from the server's answer; ``UsageError`` naming the
    kind and the field for one it must refuse (the agent reports that task failed)."""
    try:
        return WorkItem.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "item"
        raise UsageError(f"malformed work item: {where}: {first['msg']}") from e


class TaskReport(Strict):
    progress: int = Field(ge=0, le=100)
    message: str = Field("", max_length=2000)
    state: Literal["running", "done", "failed", "waiting"] | None = None
    result: SmallMap = Field(default_factory=dict)
