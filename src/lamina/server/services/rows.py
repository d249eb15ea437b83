"""The shapes of the database rows the services pass between each other.

A SQLAlchemy ``Row`` answers any attribute (its columns); these protocols say which
ones a row of each table has, with their Python types, so that a helper such as
``fleet.find_cvd`` returns a ``Cvd`` rather than ``Any`` and mypy checks every use
of its columns. They describe ``lamina.db.models`` (keep them in step with it; a
column added there is added here when a service reads it); a ``Row`` of that table
satisfies its protocol structurally, at no cost at run time.

``JsonObject`` is a JSON column whose content is free-form (device facts, an
agent's state, task params before they are parsed by kind): the one place its
values stay untyped.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

#: A free-form JSON object as a JSON column stores it.
JsonObject = dict[str, Any]
#: A piece of a flex image version: ``[offset, length, plain BLAKE3 hex, blob id hex | None]``
#: (a JSON array: read back as a list, which unpacks as this tuple does).
PieceRow = tuple[int, int, str, str | None]


class Named(Protocol):
    """A row with an id and a name, of whichever table (a member of a list)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...


class User(Protocol):
    id: str
    name: str
    password_hash: str
    role: str
    disabled: bool
    created: dt.datetime


class Group(Protocol):
    id: str
    name: str
    created: dt.datetime


class AuditEntry(Protocol):
    id: int
    time: dt.datetime
    actor: str
    action: str
    target: str
    detail: JsonObject


class Policy(Protocol):
    id: str
    name: str
    version: int
    settings: JsonObject
    created: dt.datetime
    updated: dt.datetime


class Device(Protocol):
    id: str
    hostname: str
    status: str
    facts: JsonObject
    enrolled: dt.datetime
    last_seen: dt.datetime | None
    agent_state: JsonObject


class Cvd(Protocol):
    id: str
    name: str
    device_id: str | None
    policy_id: str
    policy_version: int
    reference: bool
    state: str
    created: dt.datetime
    last_sync: dt.datetime | None
    progress: JsonObject
    blobs_indexed: bool


class Task(Protocol):
    id: str
    kind: str
    #: whose it is: the CVD and device it acts on, and who queued it
    cvd_id: str | None
    device_id: str | None
    created_by: str
    #: its course: state, progress and message, claims, times
    state: str
    progress: int
    message: str
    claimed_by: str | None
    attempts: int
    created: dt.datetime
    started: dt.datetime | None
    finished: dt.datetime | None
    #: what it does and what came of it (by kind: ``lamina.protocol.tasks``)
    params: JsonObject
    result: JsonObject


class Layer(Protocol):
    id: str
    name: str
    kind: str
    created: dt.datetime


class LayerVersion(Protocol):
    id: str
    layer_id: str
    version: int
    created: dt.datetime
    notes: str
    #: where it was captured (none for a driver pack)
    source_cvd: str | None
    source_snapshot: str | None
    #: its content: the tree, what it deletes, its size, what it installs
    root: bytes
    whiteouts: list[str]
    files: int
    bytes: int
    apps: JsonObject


class Recording(Protocol):
    cvd_id: str
    state: str
    start_snapshot: str | None
    name: str | None
    update_layer: str | None
    notes: str
    started: dt.datetime


class Collection(Protocol):
    id: str
    name: str
    filter: str
    created: dt.datetime


class DriverProfile(Protocol):
    id: str
    name: str
    os_family: str | None
    #: ``[{"name": ..., "version": int | None}]``
    packs: list[JsonObject]
    matches: list[str]
    notes: str
    created: dt.datetime
    updated: dt.datetime


class FlexImage(Protocol):
    id: str
    name: str
    created: dt.datetime


class FlexImageVersion(Protocol):
    id: str
    image_id: str
    version: int
    created: dt.datetime
    size: int
    memory_mib: int
    cpus: int
    firmware: str
    snapshot_id: str
    pieces: list[PieceRow]
    #: where the disk came from (``kind``, ``url``, ``sha256``), ``format``, ``new_bytes``
    source: JsonObject


class FlexPolicy(Protocol):
    id: str
    name: str
    restrictions: JsonObject
    expires_at: dt.datetime | None
    valid_for: int | None
    lease_seconds: int
    created: dt.datetime
    updated: dt.datetime


class FlexEntitlement(Protocol):
    id: str
    name: str
    image_id: str
    version: int | None
    policy_id: str
    manage: bool
    cvd_policy_id: str | None
    #: ``{"base": "NAME[:VERSION]" | None, "apps": [...]}`` for a managed guest
    layers: JsonObject
    created: dt.datetime


class FlexInstance(Protocol):
    id: str
    entitlement_id: str
    user_id: str
    version_id: str
    policy_id: str | None
    state: str
    message: str
    client: str
    created: dt.datetime
    last_checkin: dt.datetime | None
    enroll_token_id: str | None
    device_id: str | None


class FlexInstanceView(FlexInstance, Protocol):
    """An instance joined with the names its public form shows (``flex_instances.rows``)."""

    user: str
    entitlement: str
    image: str
    version: int
    #: the policy in force: the instance's own, else its entitlement's
    policy: str
