"""Operations: the fleet's health (the console dashboard's, for the CLI) and events."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel


class StoreUsagePublic(BaseModel):
    pack_bytes: int
    logical_bytes: int
    snapshots: int
    growth_7d: int
    reduction: float


class StatusPublic(BaseModel):
    #: Devices by health: pending, online, offline, failing, lowdisk.
    counts: dict[str, int]
    total: int
    usage: StoreUsagePublic | None
    #: Unacknowledged events by severity.
    events: dict[str, int]


class FleetDevicePublic(BaseModel):
    id: str
    hostname: str
    status: str
    health: list[str]
    policy: str | None
    cvd_id: str | None
    cvd_name: str | None
    last_sync: dt.datetime | None
    last_seen: dt.datetime | None
    layers: list[str]
    agent_version: str
    disk_free: int | None
    vendor: str
    model: str
    os: str


class FleetPage(BaseModel):
    rows: list[FleetDevicePublic]
    total: int
    page: int
    pages: int


class EventPublic(BaseModel):
    id: int
    time: dt.datetime | None
    severity: str
    source: str
    target: str
    message: str
    acknowledged_by: str | None
    acknowledged: dt.datetime | None


class AckPublic(BaseModel):
    id: int
    acknowledged_by: str
