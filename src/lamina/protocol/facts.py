"""Device facts: what an agent reports of its machine (docs/design.md, "Device facts")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from lamina.protocol.base import HOSTNAME, MAX_MAP_KEYS, Strict

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
