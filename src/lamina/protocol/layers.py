"""Layers, driver packs and profiles, recordings, assignments and collections."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field, JsonValue

from lamina.protocol.base import Strict

LayerName = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)


class CaptureRequest(Strict):
    cvd: str
    name: str | None = LayerName
    update: str | None = None
    notes: str = Field("", max_length=4000)


class RecordRequest(Strict):
    device: str
    name: str | None = LayerName
    update: str | None = None
    notes: str = Field("", max_length=4000)


class AssignRequest(Strict):
    cvds: list[str] = Field(default_factory=list, max_length=10000)
    collection: str | None = None
    base: str | None = None
    apps: list[str] = Field(default_factory=list, max_length=100)
    dry_run: bool = False


class CollectionCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    filter: str = Field("", max_length=2000)
    cvds: list[str] = Field(default_factory=list, max_length=10000)


class RulesTestRequest(Strict):
    cvd: str
    rules: str | None = Field(
        None, max_length=1_000_000, description="A rule set (JSON); default: the built-in one."
    )


class BlobsRequest(Strict):
    ids: list[str] = Field(max_length=1024)
    #: Send each blob as stored, only decrypted: ``[raw length, flag, payload]`` (flag 1:
    #: a zstd frame), for a reader that inflates and hashes it to its id itself (an agent).
    stored: bool = False


class DeltaItem(Strict):
    """One file the device holds an old version of: the old and the new version's chunk
    ids in hex, in file order (files with holes are not sent as deltas)."""

    base: list[str] = Field(max_length=4096)
    target: list[str] = Field(min_length=1, max_length=4096)


class DeltasRequest(Strict):
    """``POST /blobs/delta`` (protocol version 2): the answer is msgpack
    ``{"v": 1, "deltas": [bytes | None, ...]}``, one per item (None: fetch its chunks)."""

    items: list[DeltaItem] = Field(max_length=64)


class TreesRequest(Strict):
    """``POST /blobs/trees`` (protocol version 5): folders by id (hex) and, with ``below``,
    the folders below them, in one zstd frame (``server.services.tree_answers``)."""

    ids: list[str] = Field(min_length=1, max_length=1024)
    #: Also send the folders below them (a delivery, read whole); without, only the ones
    #: asked (a staging that walks a snapshot and leaves some folders unread).
    below: bool = True


class LayerVersionPublic(BaseModel):
    id: str
    version: int
    created: dt.datetime
    root: str
    whiteouts: list[str]
    source_cvd: str | None
    source_snapshot: str | None
    notes: str
    files: int
    bytes: int
    #: What the layer installs: {"packages": {name: version}, "desktop": [app names]}.
    apps: dict[str, JsonValue]


class LayerPublic(BaseModel):
    id: str
    name: str
    kind: Literal["base", "app"]
    created: dt.datetime
    versions: list[LayerVersionPublic]


class DriverPackVersionPublic(BaseModel):
    id: str
    version: int
    created: dt.datetime
    root: str
    notes: str
    files: int
    bytes: int
    #: The .deb packages the version carries: {name: version}.
    packages: dict[str, str]
    #: Files it carries outside packages (firmware, modprobe.d...).
    loose_files: int


class DriverPackPublic(BaseModel):
    """A driver pack (``lamina driver list/show/import/delete``) with its versions."""

    id: str
    name: str
    created: dt.datetime
    versions: list[DriverPackVersionPublic]


class RecordingPublic(BaseModel):
    """A recording's state after ``record start``, ``record finalize`` or ``record cancel``
    (``cancelled``, no task)."""

    id: str
    cvd: str
    state: str
    task: str


class PlanItemPublic(BaseModel):
    id: str
    path: str
    action: str
    layer: str
    detail: str


class PlanPublic(BaseModel):
    """What an assignment or enforcement does (or, in a dry run, would do) to one CVD."""

    id: str
    cvd: str
    status: Literal["assigned", "dry-run", "refused"]
    layers: list[str]
    #: The driver packs the device gets with the layers, as ``NAME:VERSION``.
    packs: list[str] = Field(default_factory=list)
    #: E.g. no driver profile matches a device of other hardware than the base layer's.
    warnings: list[str] = Field(default_factory=list)
    task: str | None
    counts: dict[str, int]
    download_bytes: int
    space_needed: int
    refused: list[str]
    items: list[PlanItemPublic]


class CvdLayersPublic(BaseModel):
    id: str
    assigned: list[str]
    running: list[str]


class HardwareBoundPublic(BaseModel):
    rules: list[str]
    count: int
    examples: list[str]


class RulesTestPublic(BaseModel):
    id: str
    cvd: str
    snapshot: str
    rules: str
    kept: int
    kept_bytes: int
    dropped: int
    dropped_by_reason: dict[str, int]
    examples: dict[str, list[str]]
    #: The rule set's hardware-bound paths (kept from the new machine by a migration) and
    #: those found in the CVD's last snapshot.
    hardware_bound: HardwareBoundPublic | None = None


class CollectionPublic(BaseModel):
    id: str
    name: str
    filter: str
    created: dt.datetime
    members: list[str]


class DriverProfileCreate(Strict):
    """``POST /driver-profiles``: the packs a machine matching every glob gets."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    packs: list[str] = Field(min_length=1, max_length=32)
    matches: list[str] = Field(min_length=1, max_length=32)
    os_family: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    notes: str = Field("", max_length=4000)


class DriverProfileUpdate(Strict):
    """``PUT /driver-profiles/{ref}``: what is given replaces."""

    packs: list[str] | None = Field(None, min_length=1, max_length=32)
    matches: list[str] | None = Field(None, min_length=1, max_length=32)
    os_family: str | None = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$", description='"" clears it'
    )
    notes: str | None = Field(None, max_length=4000)


class DriverProfilePublic(BaseModel):
    """A driver profile (``lamina driver profile list/show/create/update/delete``)."""

    id: str
    name: str
    #: The packs, as ``NAME`` or ``NAME:VERSION`` (pinned).
    packs: list[str]
    #: ``field=glob`` matches on the device's facts, all of which must hold.
    matches: list[str]
    os_family: str | None
    notes: str
    created: dt.datetime
    updated: dt.datetime


class MatchedDevicePublic(BaseModel):
    """A device a driver profile matches today (``lamina driver profile test``)."""

    id: str
    hostname: str
