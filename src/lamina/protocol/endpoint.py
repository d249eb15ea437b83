"""What an endpoint's agent and the server say to each other: enrollment, the agent's
config (its report's answer) and the sync (missing blobs, bundles' answers, the commit).

Apart from ``lamina.protocol.schemas`` (which re-exports the names its callers import
from there) so that an agent run builds these models only, not the API's ~90 others:
an unchanged sync is mostly start-up, and each pydantic model costs its import time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from lamina.protocol import UNNAMED_VERSION
from lamina.protocol.base import HOSTNAME, Hex32, SmallMap, Strict
from lamina.protocol.facts import HardwareFacts
from lamina.protocol.policies import PolicySettings


class ChunkingPublic(BaseModel):
    chunker_seed: int
    #: Empty for a pending device: it gets the key in ``AgentConfig`` once active.
    id_key: str
    min_size: int
    avg_size: int
    max_size: int


class EnrollRequest(Strict):
    token: str = Field(min_length=8, max_length=256)
    facts: HardwareFacts


class EnrollResponse(BaseModel):
    device_id: str
    credential: str
    status: str
    chunking: ChunkingPublic


class AgentConfig(BaseModel):
    device_id: str
    status: str
    cvd_id: str | None
    policy: PolicySettings | None
    policy_version: int | None
    last_sync: dt.datetime | None
    gc_epoch: int = 0
    #: The chunking secret, given to active devices only (not in a pending enrollment).
    chunking: ChunkingPublic | None = None
    #: The protocol version the server speaks (a version-2 server sends none).
    protocol: int = UNNAMED_VERSION


class MissingRequest(Strict):
    ids: list[str] = Field(max_length=20000)


class MissingResponse(BaseModel):
    missing: list[str]


class CommitRequest(Strict):
    root: str = Hex32
    files: int = Field(ge=0)
    bytes: int = Field(ge=0)
    stats: SmallMap = Field(default_factory=dict)


class BundleResponse(BaseModel):
    #: Blobs of the bundle new to this CVD (never whether another CVD stored them).
    new: int


class SnapshotPublic(BaseModel):
    id: str
    time: dt.datetime
    files: int
    bytes: int
    root: str
    meta: dict[str, Any]


class CommitResponse(BaseModel):
    snapshot: SnapshotPublic
    kept: int
    forgotten: int


class AgentStatusReport(Strict):
    state: str = Field(max_length=64)
    progress: SmallMap = Field(default_factory=dict)
    disk_free: int | None = Field(None, ge=0)
    #: Fresh hardware facts (sent at the agent's start and after every sync).
    facts: HardwareFacts | None = None
    #: Why the agent is in state "error" (a failed sync...): becomes an event.
    last_error: str | None = Field(None, max_length=1024)
    #: The agent's clock when it sent this: a skew becomes an event.
    clock: dt.datetime | None = None
    #: The endpoint's hostname now (/etc/hostname): refreshes the device's.
    hostname: str | None = Field(None, min_length=1, max_length=255, pattern=HOSTNAME)
