"""JSON schemas of the API (pydantic v2): users and sessions, devices and CVDs.

The other concepts have their own modules, re-exported here for the callers that
import from ``lamina.protocol.schemas``: ``base`` (the strict model, bounded maps),
``endpoint`` (enrollment, the agent's config and sync: what an agent run imports),
``policies``, ``facts``, ``tasks`` (kinds, parameters, ``TaskPublic``, ``WorkItem``),
``layers`` (layers, drivers, collections) and ``migration``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from lamina.protocol import UNNAMED_VERSION
from lamina.protocol.base import (
    HOSTNAME,
    MAX_MAP_BYTES,
    MAX_MAP_KEYS,
    ErrorPublic,
    Hex32,
    SmallMap,
    Strict,
)
from lamina.protocol.endpoint import (
    AgentConfig,
    ChunkingPublic,
    CommitRequest,
    CommitResponse,
    EnrollRequest,
    EnrollResponse,
    SnapshotPublic,
)
from lamina.protocol.facts import (
    FACTS_FORMAT,
    FACTS_FORMAT_V2,
    MAX_FACT_ITEMS,
    MAX_MODALIASES,
    DiskFact,
    HardwareFacts,
    Modalias,
    NetInterface,
    Printable,
    StorageController,
)
from lamina.protocol.layers import (
    AssignRequest,
    BlobsRequest,
    CaptureRequest,
    CollectionCreate,
    CollectionPublic,
    CvdLayersPublic,
    DeltaItem,
    DeltasRequest,
    DriverPackPublic,
    DriverPackVersionPublic,
    HardwareBoundPublic,
    LayerName,
    LayerPublic,
    LayerVersionPublic,
    PlanItemPublic,
    PlanPublic,
    RecordingPublic,
    RecordRequest,
    RulesTestPublic,
    RulesTestRequest,
)
from lamina.protocol.migration import MigrateRequest, MigrationMode
from lamina.protocol.policies import (
    PROTECTABLE,
    PathClass,
    PolicyCreate,
    PolicyPublic,
    PolicySettings,
    PolicyUpdate,
)
from lamina.protocol.tasks import TaskPublic, TaskReport, WorkItem

__all__ = [
    "FACTS_FORMAT",
    "FACTS_FORMAT_V2",
    "HOSTNAME",
    "MAX_FACT_ITEMS",
    "MAX_MAP_BYTES",
    "MAX_MAP_KEYS",
    "MAX_MODALIASES",
    "PROTECTABLE",
    "AgentConfig",
    "AssignRequest",
    "BlobsRequest",
    "CaptureRequest",
    "ChunkingPublic",
    "CollectionCreate",
    "CollectionPublic",
    "CommitRequest",
    "CommitResponse",
    "CvdLayersPublic",
    "DeltaItem",
    "DeltasRequest",
    "DiskFact",
    "DriverPackPublic",
    "DriverPackVersionPublic",
    "EnrollRequest",
    "EnrollResponse",
    "ErrorPublic",
    "HardwareBoundPublic",
    "HardwareFacts",
    "Hex32",
    "LayerName",
    "LayerPublic",
    "LayerVersionPublic",
    "MigrateRequest",
    "MigrationMode",
    "Modalias",
    "NetInterface",
    "PathClass",
    "PlanItemPublic",
    "PlanPublic",
    "PolicyCreate",
    "PolicyPublic",
    "PolicySettings",
    "PolicyUpdate",
    "Printable",
    "RecordRequest",
    "RecordingPublic",
    "RulesTestPublic",
    "RulesTestRequest",
    "SmallMap",
    "SnapshotPublic",
    "StorageController",
    "Strict",
    "TaskPublic",
    "TaskReport",
    "WorkItem",
]


# --- users and sessions ----------------------------------------------------------
class LoginRequest(Strict):
    user: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class LoginResponse(BaseModel):
    token: str
    user: str
    role: str
    expires: dt.datetime | None


class MePublic(BaseModel):
    """Who a bearer token belongs to (``/auth/me``)."""

    id: str
    name: str
    kind: str
    #: A user's role; a device's status.
    role: str
    permissions: list[str]


class HealthPublic(BaseModel):
    status: Literal["ok"]
    version: str
    store: str
    #: The protocol version the server speaks (a version-2 server sends none).
    protocol: int = UNNAMED_VERSION


class UserCreate(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=1024)
    role: Literal["administrator", "helpdesk", "readonly", "flex-user"]


class ApiTokenCreate(Strict):
    """A named API token for scripts: it acts as its user, like a session."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@ -]+$")
    expires_in: int = Field(90 * 86400, ge=60, le=366 * 86400)


class PasswordChange(Strict):
    password: str = Field(min_length=8, max_length=1024)
    current: str | None = Field(None, max_length=1024, description="Needed for one's own.")


class UserPublic(BaseModel):
    id: str
    name: str
    role: str
    disabled: bool
    created: dt.datetime


class AuditPublic(BaseModel):
    id: str
    time: dt.datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


# --- enrollment --------------------------------------------------------------------
class TokenCreate(Strict):
    expires_in: int = Field(3600, ge=60, le=366 * 86400)
    policy: str | None = None
    reference: bool = False
    uses: int = Field(1, ge=1, le=100000, description="How many devices may enroll with it.")


class TokenPublic(BaseModel):
    id: str
    token: str
    expires: dt.datetime
    uses: int = 1


class TokenInfo(BaseModel):
    """A session, an API token or an enrollment token, without its secret."""

    id: str
    kind: Literal["session", "api", "enrollment"]
    owner: str
    name: str
    created: dt.datetime
    expires: dt.datetime | None
    last_used: dt.datetime | None
    uses: int | None = None
    max_uses: int | None = None
    state: Literal["active", "expired", "used up", "revoked"]
    current: bool = False


# --- devices and CVDs --------------------------------------------------------------
class DevicePublic(BaseModel):
    id: str
    hostname: str
    status: str
    facts: dict[str, Any]
    enrolled: dt.datetime
    last_seen: dt.datetime | None
    cvd_id: str | None
    agent: dict[str, Any]


class CentralizeRequest(Strict):
    policy: str
    reference: bool = False
    name: str | None = Field(None, max_length=255)


class CvdPublic(BaseModel):
    id: str
    name: str
    device_id: str | None
    hostname: str | None
    policy: str
    policy_version: int
    reference: bool
    state: str
    created: dt.datetime
    last_sync: dt.datetime | None
    snapshots: int
    progress: dict[str, Any]


class DownloadPublic(SnapshotPublic):
    """A restore as download: the snapshot, and the store's id key (hex) so the reader
    can ask ``/blobs/read`` for blobs as stored and hash each one against its id itself
    (protocol version 4). Only a caller allowed ``data.read`` gets it: that caller can
    read every blob's plaintext anyway, so the key tells them nothing more."""

    id_key: str


class BrowseEntry(BaseModel):
    id: str
    name: str
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    target: str | None = None


class RestoreRequest(Strict):
    snapshot: str
    paths: list[str] = Field(default_factory=list, max_length=1000)
    overwrite: bool = False


class DownloadRequest(Strict):
    """A restore as download (``cvd restore --output``): which paths, for the audit log."""

    paths: list[str] = Field(default_factory=list, max_length=1000)


class RevertRequest(Strict):
    snapshot: str
    system_only: bool = True
    dry_run: bool = Field(
        False, description="Only list what the revert would add, update and remove."
    )
