"""Migration and provisioning: a CVD laid onto another device, its own repaired one, or a
device's system laid down from layers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lamina.protocol.base import Strict

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


class RestoreSystemRequest(Strict):
    """``POST /cvds/{ref}/restore-system``: a full migration onto the CVD's own device."""

    to: str = Field(max_length=255)
    snapshot: str = Field("latest", max_length=64)
    dry_run: bool = False


class ProvisionRequest(Strict):
    """``POST /devices/{ref}/provision``: a pending device's system laid down from layers."""

    base: str = Field(max_length=255, description="Base layer NAME[:VERSION].")
    apps: list[str] = Field(default_factory=list, max_length=64)
    policy: str = Field(max_length=255)
    name: str | None = Field(None, max_length=255)
    dry_run: bool = False


class MigrateOsRequest(Strict):
    """``POST /cvds/{ref}/migrate-os``: the endpoint moved to a base of another OS release."""

    base: str = Field(max_length=255, description="A base layer of the new OS release.")
    dry_run: bool = False


#: What an answer says was done: only validated, or the task queued.
ReportStatus = Literal["dry-run", "queued"]


class NicMapRow(BaseModel):
    """One old NIC and the new machine's NIC that takes its settings (None: none does)."""

    old: str
    new: str | None
    #: The rule that matched: mac, path, driver, name or order.
    rule: str | None


class PackageConflict(BaseModel):
    """A user-installed package the new base layer has at another version."""

    package: str
    cvd: str
    new: str
    wins: str


class MigrationReport(BaseModel):
    """What a migration (or ``restore-system``) does, or in a dry run would do."""

    id: str
    cvd: str
    device: str
    device_id: str
    mode: str
    snapshot: str
    status: ReportStatus
    task: str | None
    #: Why it cannot run (a dry run lists them; a real run is refused with the first).
    blocking: list[str]
    warnings: list[str]
    space_needed: int
    disk_free: int | None
    #: An upper bound: the agent takes what the new machine already holds from its disk.
    download_bytes: int
    boot_set_bytes: int
    stream_bytes: int
    driver_packs: list[str]
    kept_from_new_machine: list[str]
    packages_carried: dict[str, str]
    packages_not_carried: dict[str, str]
    rebuild_initramfs: bool
    network: list[str]
    network_map: list[NicMapRow]
    layers: list[str]
    packages_from_layers: dict[str, str]
    package_conflicts: list[PackageConflict]


class ProvisionReport(BaseModel):
    """What provisioning a pending device does, or in a dry run would do."""

    #: The CVD created (None in a dry run).
    id: str | None = None
    device: str
    device_id: str
    layers: list[str]
    driver_packs: list[str]
    kept_from_new_machine: list[str]
    status: ReportStatus
    task: str | None


class MigrateOsReport(BaseModel):
    """What moving an endpoint to another OS release does, or in a dry run would do."""

    id: str
    cvd: str
    base: str
    #: The new release: ``ID VERSION_ID`` of its os-release.
    os: str
    layers: list[str]
    #: App layers with no version captured on the new release: dropped.
    app_layers_not_fitting: list[str]
    #: User-installed packages, which do not travel to another release.
    packages_not_carried: dict[str, str]
    driver_packs: list[str]
    status: ReportStatus
    task: str | None
