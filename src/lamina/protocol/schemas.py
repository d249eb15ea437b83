"""JSON schemas of the API (pydantic v2)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

Hex32 = Field(pattern=r"^[0-9a-f]{64}$")
#: What a device may call itself (RFC 1123 labels, plus ``_``): no spaces, no control characters.
HOSTNAME = r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,253}[A-Za-z0-9_])?$"

#: Bounds of a free-form map a client sends (progress, stats, result, facts): keys, JSON bytes.
MAX_MAP_KEYS = 256
MAX_MAP_BYTES = 128 * 1024


def _small_map(v: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(v, default=str))
    if size > MAX_MAP_BYTES:
        raise ValueError(f"is {size} bytes as JSON, above the {MAX_MAP_BYTES}-byte limit")
    return v


#: A map from a client, stored as it is: bounded in keys and in encoded size.
SmallMap = Annotated[dict[str, Any], Field(max_length=MAX_MAP_KEYS), AfterValidator(_small_map)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors ------------------------------------------------------------------
class ErrorPublic(BaseModel):
    code: str
    message: str


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


# --- policies ------------------------------------------------------------------
PathClass = Literal["system", "applications", "user_data", "machine_identity"]
PROTECTABLE: tuple[PathClass, ...] = ("system", "applications", "user_data", "machine_identity")


class PolicySettings(Strict):
    """What a CVD policy decides. Paths are globs on endpoint paths (``/home/**``)."""

    interval: int = Field(3600, ge=60, le=30 * 86400, description="Seconds between uploads.")
    keep_last: int = Field(3, ge=1, le=10000)
    keep_hourly: int = Field(24, ge=0, le=10000)
    keep_daily: int = Field(7, ge=0, le=10000)
    keep_weekly: int = Field(4, ge=0, le=10000)
    keep_monthly: int = Field(12, ge=0, le=10000)
    include: list[str] = Field(default_factory=lambda: ["/**"])
    exclude: list[str] = Field(default_factory=list)
    exceptions: list[str] = Field(default_factory=list, description="Re-included inside excludes.")
    classes: list[PathClass] = Field(
        default_factory=lambda: list(PROTECTABLE),
        description="Path classes to protect; the 'excluded' class is never uploaded.",
    )
    bandwidth_limit: int = Field(0, ge=0, description="Upload bytes per second, 0 for no limit.")


class PolicyCreate(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    settings: PolicySettings = Field(default_factory=PolicySettings)


class PolicyUpdate(Strict):
    settings: PolicySettings


class PolicyPublic(BaseModel):
    id: str
    name: str
    version: int
    settings: PolicySettings
    cvds: int


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


#: One line of printable text from sysfs (DMI strings): no control characters.
Printable = Annotated[str, Field(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")]
#: A kernel modalias (``pci:v000010ECd00008168...``): printable ASCII without spaces.
Modalias = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")]
#: Bounds of the fact lists (a machine with more is not one Lamina manages).
MAX_MODALIASES = 1024
MAX_FACT_ITEMS = 256


class StorageController(Strict):
    """A PCI mass-storage controller (class 0x01): its address, modalias and driver."""

    slot: str = Field(max_length=64, pattern=r"^[0-9A-Za-z:.]+$")
    modalias: Modalias
    pci_class: str = Field("", max_length=16, pattern=r"^(0x[0-9a-fA-F]{1,8})?$")
    driver: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")


class NetInterface(Strict):
    name: str = Field(min_length=1, max_length=15, pattern=r"^[A-Za-z0-9_.:@-]+$")
    mac: str = Field("", max_length=64, pattern=r"^([0-9a-f]{2}(:[0-9a-f]{2})*)?$")
    # Facts format 3 (empty from older agents, and for virtual interfaces):
    #: the bus address of its device: the PCI function (``0000:00:19.0``, also for a
    #: virtio NIC), or the USB interface (``1-1:1.0``)
    bus: str = Field("", max_length=64, pattern=r"^[0-9A-Za-z:.-]*$")
    #: where the device sits, as udev's ``ID_PATH`` (``pci-0000:00:19.0``,
    #: ``pci-0000:00:14.0-usb-0:1:1.0``): the same slot on another machine of one model
    path: str = Field("", max_length=255, pattern=r"^[0-9A-Za-z:._-]*$")
    #: its kernel driver (``e1000e``, ``r8169``)
    driver: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")


class DiskFact(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:!-]+$")
    size: int = Field(0, ge=0, le=2**63 - 1)


#: Bounds of a package list (facts format 4): rows, and what the agent lets them cost
#: in the facts' JSON (every JSON body is at most 1 MiB: ``max_json``).
MAX_PACKAGES = 8192
PACKAGES_BUDGET = 512 * 1024


class PackageFact(Strict):
    """One installed package of a machine's dpkg database, in dpkg's syntax."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-z0-9][a-z0-9+.-]*$")
    version: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9.+~:_-]+$")
    arch: str = Field("", max_length=32, pattern=r"^[a-z0-9-]*$")


class PackageFacts(Strict):
    """A machine's dpkg database as a pending agent reports it (facts format 4).

    ``database``: ``read`` (``installed`` is every installed package, in the database's
    order); ``none`` (no database a migration can read: absent, not a regular file, not
    deb822, or larger than a staging reads: nothing would be carried onto it);
    ``partial`` (more packages than the facts hold, or one outside dpkg's syntax: the
    list is empty and a dry run cannot foresee what staging decides)."""

    database: Literal["read", "none", "partial"]
    installed: list[PackageFact] = Field(default_factory=list, max_length=MAX_PACKAGES)


#: The facts format this agent writes, and the one older agents wrote.
FACTS_FORMAT = 4
FACTS_FORMAT_V2 = 2


class HardwareFacts(Strict):
    """What an agent reports of its machine (format: docs/design.md, "Device facts")."""

    #: The facts format: 3 adds each NIC's bus address, path and driver, 4 the package
    #: list of a pending machine; an older agent sends none (format 2), and its facts
    #: are read as they are.
    facts_format: int = Field(FACTS_FORMAT_V2, ge=1, le=FACTS_FORMAT)
    machine_id: str = Field(min_length=1, max_length=128)
    #: Letters, digits, dot, dash and underscore only: it is printed by admin tools.
    hostname: str = Field(min_length=1, max_length=255, pattern=HOSTNAME)
    vendor: Printable = ""
    model: Printable = ""
    os_release: dict[str, str] = Field(default_factory=dict, max_length=MAX_MAP_KEYS)
    disk_size: int = Field(0, ge=0)
    agent_version: str = Field("", max_length=64)
    # DMI (/sys/class/dmi/id); "" when the machine has none (a VM without SMBIOS, a folder)
    sys_vendor: Printable = ""
    product_name: Printable = ""
    product_version: Printable = ""
    product_family: Printable = ""
    board_vendor: Printable = ""
    board_name: Printable = ""
    bios_vendor: Printable = ""
    bios_version: Printable = ""
    chassis_type: Printable = ""
    #: Every PCI and USB device's modalias, sorted, without duplicates.
    modaliases: list[Modalias] = Field(default_factory=list, max_length=MAX_MODALIASES)
    cpu_vendor: Printable = ""
    boot_mode: Literal["uefi", "bios", ""] = ""
    storage_controllers: list[StorageController] = Field(
        default_factory=list, max_length=MAX_FACT_ITEMS
    )
    network: list[NetInterface] = Field(default_factory=list, max_length=MAX_FACT_ITEMS)
    disks: list[DiskFact] = Field(default_factory=list, max_length=MAX_FACT_ITEMS)
    #: Format 4: the installed packages, reported while the device is not active (a
    #: replacement waiting for a migration); None: not reported.
    packages: PackageFacts | None = None


class EnrollRequest(Strict):
    token: str = Field(min_length=8, max_length=256)
    facts: HardwareFacts


class ChunkingPublic(BaseModel):
    chunker_seed: int
    #: Empty for a pending device: it gets the key in ``AgentConfig`` once active.
    id_key: str
    min_size: int
    avg_size: int
    max_size: int


class EnrollResponse(BaseModel):
    device_id: str
    credential: str
    status: str
    chunking: ChunkingPublic


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


class SnapshotPublic(BaseModel):
    id: str
    time: dt.datetime
    files: int
    bytes: int
    root: str
    meta: dict[str, Any]


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


MigrationMode = Literal["full", "apps-data", "data"]


class MigrateRequest(Strict):
    """Lay a CVD onto another device (``cvd migrate``) or its own repaired one (``restore-system``)."""

    to: str = Field(max_length=255, description="The device (id or hostname) that gets the CVD.")
    mode: MigrationMode = "full"
    base: str | None = Field(None, max_length=255, description="Base layer NAME[:VERSION].")
    keep_base: bool = False
    name: str | None = Field(None, max_length=255, description="A new name for the CVD.")
    snapshot: str = Field("latest", max_length=64)
    dry_run: bool = Field(False, description="Only validate and report; change nothing.")


# --- tasks ---------------------------------------------------------------------
class TaskPublic(BaseModel):
    id: str
    kind: str
    state: str
    progress: int
    message: str
    cvd_id: str | None
    device_id: str | None
    params: dict[str, Any]
    result: dict[str, Any]
    created_by: str
    created: dt.datetime
    started: dt.datetime | None
    finished: dt.datetime | None


# --- the agent's side ----------------------------------------------------------------
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


class CommitResponse(BaseModel):
    snapshot: SnapshotPublic
    kept: int
    forgotten: int


class WorkItem(BaseModel):
    task_id: str
    kind: str
    params: dict[str, Any]


class TaskReport(Strict):
    progress: int = Field(ge=0, le=100)
    message: str = Field("", max_length=2000)
    state: Literal["running", "done", "failed", "waiting"] | None = None
    result: SmallMap = Field(default_factory=dict)


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


# --- layers and collections ----------------------------------------------------------
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


class DeltaItem(Strict):
    """One file the device holds an old version of: the old and the new version's chunk
    ids in hex, in file order (files with holes are not sent as deltas)."""

    base: list[str] = Field(max_length=4096)
    target: list[str] = Field(min_length=1, max_length=4096)


class DeltasRequest(Strict):
    """``POST /blobs/delta`` (protocol version 2): the answer is msgpack
    ``{"v": 1, "deltas": [bytes | None, ...]}``, one per item (None: fetch its chunks)."""

    items: list[DeltaItem] = Field(max_length=64)


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
    """A recording's state after ``record start`` or ``record finalize``."""

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
