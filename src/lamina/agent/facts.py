"""Hardware and OS facts an agent reports at enrollment and after every sync.

OS facts come from the endpoint's root; hardware facts from a sysfs tree (``/sys``
on a real machine; tests point ``sysfs`` at a fake tree). An override (``lamina
agent enroll --facts FILE``, kept in the agent's state) is merged over what was
detected. Everything read is bounded: a sysfs file is read up to 4 KiB, lists are
cut at the schema's limits, and text that is not printable is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lamina import __version__
from lamina.errors import LaminaError, UsageError
from lamina.layers.drivers import DMI_FIELDS
from lamina.protocol.base import HOSTNAME
from lamina.protocol.facts import (
    FACTS_FORMAT,
    MAX_FACT_ITEMS,
    MAX_MODALIASES,
    MAX_PACKAGES,
    PACKAGES_BUDGET,
    HardwareFacts,
    PackageFact,
)
from lamina.tree.paths import MAX_READ

SYSFS = Path("/sys")
#: A sysfs attribute is one short line; a longer one is not what we look for.
_ATTR_MAX = 4096
#: An override file is a small JSON object.
OVERRIDE_MAX = 256 * 1024
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_MODALIAS = re.compile(r"^[\x21-\x7e]{1,256}$")
_MAC = re.compile(r"^([0-9a-f]{2}(:[0-9a-f]{2})*)?$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_DISK = re.compile(r"^[A-Za-z0-9_.:!-]{1,64}$")
_DRIVER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: A PCI function's address (``0000:00:19.0``) and a USB interface's (``1-1.2:1.0``).
_PCI_ADDR = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_USB_IFACE = re.compile(r"^\d{1,3}-[\d.]{1,32}:\d{1,3}\.\d{1,3}$")


def _read(path: Path, limit: int = 1 << 20) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError), open(path, "rb") as f:
        return f.read(limit).decode().strip()
    return ""


def _attr(path: Path) -> str:
    """One sysfs attribute: printable text up to 255 characters, else ""."""
    v = _read(path, _ATTR_MAX)
    return v[:255] if _PRINTABLE.match(v) else ""


def _entries(folder: Path, limit: int) -> list[Path]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [folder / n for n in names[:limit]]


def os_release(root: Path) -> dict[str, str]:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        text = _read(root / rel)
        if text:
            out = {}
            for line in text.splitlines():
                if "=" in line and not line.startswith("#"):
                    k, v = line.split("=", 1)
                    out[k.strip()] = v.strip().strip('"')
            return out
    return {}


def disk_usage(root: Path) -> tuple[int, int]:
    """The total and free bytes of the file system holding ``root`` (0, 0 if unknown)."""
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        return 0, 0
    return usage.total, usage.free


def gather(
    root: Path,
    sysfs: Path = SYSFS,
    override: dict[str, Any] | None = None,
    packages: bool = False,
) -> HardwareFacts:
    """Facts of the endpoint whose file system is ``root`` (``/`` on a real machine),
    its hardware read from ``sysfs``, with ``override`` merged over them; with
    ``packages`` (a device not active yet), its installed packages too."""
    machine_id = _read(root / "etc/machine-id") or _read(root / "var/lib/dbus/machine-id")
    hostname = _read(root / "etc/hostname") or socket.gethostname()
    if not machine_id:
        # A directory endpoint without one: derive a stable id from where it lives.
        machine_id = hashlib.sha256(
            f"{socket.gethostname()}:{root.resolve()}".encode()
        ).hexdigest()[:32]
    disk, _ = disk_usage(root)
    doc: dict[str, Any] = {
        "machine_id": machine_id[:128],
        "hostname": hostname[:255],
        "os_release": os_release(root),
        "disk_size": disk,
        "agent_version": __version__,
        "facts_format": FACTS_FORMAT,
        **hardware(sysfs),
    }
    if packages:
        doc["packages"] = package_facts(root)
    if override:
        doc.update(override)
    doc.setdefault("vendor", doc["sys_vendor"])
    doc.setdefault("model", doc["product_name"])
    try:
        return HardwareFacts(**doc)
    except ValidationError as e:
        raise UsageError(f"the device facts are not valid: {_first_error(e)}") from e


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"


def hardware(sysfs: Path = SYSFS) -> dict[str, Any]:
    """The hardware facts a sysfs tree tells (see ``HardwareFacts``)."""
    dmi = sysfs / "class/dmi/id"
    out: dict[str, Any] = {k: _attr(dmi / k) for k in DMI_FIELDS}
    aliases: set[str] = set()
    for bus in ("pci", "usb"):
        for dev in _entries(sysfs / "bus" / bus / "devices", MAX_MODALIASES):
            m = _attr(dev / "modalias")
            if _MODALIAS.match(m):
                aliases.add(m)
    out["modaliases"] = sorted(aliases)[:MAX_MODALIASES]
    out["cpu_vendor"] = _cpu_vendor(sysfs)
    out["boot_mode"] = "uefi" if (sysfs / "firmware/efi").is_dir() else "bios"
    out["storage_controllers"] = _storage(sysfs)
    out["network"] = _network(sysfs)
    out["disks"] = _disks(sysfs)
    return out


def _cpu_vendor(sysfs: Path) -> str:
    """``vendor_id`` of the first CPU in ``/proc/cpuinfo`` (``proc`` beside ``sys``)."""
    text = _read(sysfs.parent / "proc/cpuinfo", 64 * 1024)
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("vendor_id", "CPU implementer"):
            v = value.strip()[:64]
            return v if _PRINTABLE.match(v) else ""
    return ""


def _storage(sysfs: Path) -> list[dict[str, str]]:
    out = []
    for dev in _entries(sysfs / "bus/pci/devices", MAX_MODALIASES):
        cls = _attr(dev / "class")
        if not re.match(r"^0x01[0-9a-fA-F]{4}$", cls):
            continue
        m = _attr(dev / "modalias")
        if not _MODALIAS.match(m):
            continue
        driver = ""
        with contextlib.suppress(OSError):
            driver = os.path.basename(os.readlink(dev / "driver"))
        out.append(
            {
                "slot": dev.name[:64] if re.match(r"^[0-9A-Za-z:.]+$", dev.name) else "",
                "modalias": m,
                "pci_class": cls,
                "driver": driver if re.match(r"^[A-Za-z0-9_.-]{0,64}$", driver) else "",
            }
        )
    return [s for s in out if s["slot"]][:MAX_FACT_ITEMS]


def _network(sysfs: Path) -> list[dict[str, str]]:
    out = []
    for dev in _entries(sysfs / "class/net", MAX_FACT_ITEMS):
        if dev.name == "lo" or not _IFNAME.match(dev.name):
            continue
        mac = _attr(dev / "address").lower()
        out.append({"name": dev.name, "mac": mac if _MAC.match(mac) else "", **_nic_device(dev)})
    return out


def _link(path: Path) -> str:
    try:
        return os.readlink(path)[:4096]
    except OSError:
        return ""


def _nic_device(dev: Path) -> dict[str, str]:
    """Where a NIC's device sits (facts format 3): its bus address, an ``ID_PATH``-style
    path and its driver, from the ``device`` and ``device/driver`` links. Only the
    links' names are read, no file they lead to. All "" for a virtual NIC."""
    if not os.path.islink(dev / "device"):
        return {"bus": "", "path": "", "driver": ""}
    # Resolved, not joined as text: /sys/class/net/X is itself a link into /sys/devices.
    parts = os.path.realpath(dev / "device").split("/")
    bus = path = ""
    pcis = [i for i, p in enumerate(parts) if _PCI_ADDR.match(p)]
    if pcis:  # as udev's path_id: the last PCI function, then the USB port below it
        bus = parts[pcis[-1]]
        path = f"pci-{bus}"
        usb = [p for p in parts[pcis[-1] + 1 :] if _USB_IFACE.match(p)]
        if usb:
            bus = usb[-1]
            path += "-usb-0:" + bus.split("-", 1)[1]
    driver = os.path.basename(_link(dev / "device/driver"))
    return {
        "bus": bus,
        "path": path[:255],
        "driver": driver if _DRIVER.match(driver) else "",
    }


def _disks(sysfs: Path) -> list[dict[str, Any]]:
    out = []
    for dev in _entries(sysfs / "block", MAX_FACT_ITEMS):
        if not _DISK.match(dev.name) or dev.name.startswith(("loop", "ram", "zram")):
            continue
        sectors = _attr(dev / "size")
        size = int(sectors) * 512 if sectors.isdigit() and len(sectors) < 18 else 0
        out.append({"name": dev.name, "size": size})
    return out


def read_dpkg_status(root: Path) -> bytes | None:
    """dpkg's database under ``root`` as a migration's staging reads it: the file itself
    (a link is not followed), a regular file, at most ``MAX_READ`` bytes; else None."""
    from lamina.layers.merge import DPKG_STATUS  # with python-debian: ~9 ms, not every run's

    try:
        # O_NONBLOCK: a FIFO put there must not hang the agent (it is refused below).
        fd = os.open(root / DPKG_STATUS.lstrip("/"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(MAX_READ + 1)
    return data if len(data) <= MAX_READ else None


def package_facts(root: Path) -> dict[str, Any]:
    """The ``packages`` fact (format 4): the installed packages of the dpkg database
    under ``root`` in its order, read as hostile input (:func:`read_dpkg_status`).
    ``none`` when staging could not read it either; ``partial`` (no rows) when a row
    is outside dpkg's syntax or the list would pass ``MAX_PACKAGES`` rows or
    ``PACKAGES_BUDGET`` bytes of JSON."""
    from lamina.layers.merge import INSTALLED, parse_dpkg_status

    data = read_dpkg_status(root)
    try:
        stanzas = parse_dpkg_status(data) if data is not None else None
    except LaminaError:
        stanzas = None
    if stanzas is None:
        return {"database": "none", "installed": []}
    rows: list[dict[str, str]] = []
    cost = 0
    for s in stanzas.values():
        if s.status != INSTALLED:
            continue
        row = {"name": s.name, "version": s.version, "arch": s.arch}
        cost += len(s.name) + len(s.version) + len(s.arch) + 40
        try:
            PackageFact(**row)
        except ValidationError:
            return {"database": "partial", "installed": []}
        if len(rows) >= MAX_PACKAGES or cost > PACKAGES_BUDGET:
            return {"database": "partial", "installed": []}
        rows.append(row)
    return {"database": "read", "installed": rows}


def dpkg_signature(root: Path) -> tuple[int, int, int] | None:
    """What changes when dpkg writes its database (inode, size, mtime): a pending agent
    reports its packages again when it does."""
    from lamina.layers.merge import DPKG_STATUS

    try:
        st = os.lstat(root / DPKG_STATUS.lstrip("/"))
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def load_override(path: Path) -> dict[str, Any]:
    """A ``--facts FILE``: a JSON object whose keys are facts; checked against the schema."""
    try:
        with open(path, "rb") as f:
            data = f.read(OVERRIDE_MAX + 1)
    except OSError as e:
        raise UsageError(f"cannot read the facts file {path}: {e.strerror}") from e
    if len(data) > OVERRIDE_MAX:
        raise UsageError(f"the facts file {path} is above {OVERRIDE_MAX} bytes")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise UsageError(f"the facts file {path} is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise UsageError(f"the facts file {path} must hold a JSON object of facts")
    unknown = sorted(set(doc) - set(HardwareFacts.model_fields))
    if unknown:
        raise UsageError(
            f"the facts file {path} names unknown facts: {', '.join(unknown[:5])}"
            " (see `lamina device show --json` for the names)"
        )
    try:
        HardwareFacts(**{"machine_id": "x", "hostname": "x", **doc})
    except ValidationError as e:
        raise UsageError(f"the facts file {path} is not valid: {_first_error(e)}") from e
    return doc


def current_hostname(root: Path) -> str | None:
    """The endpoint's hostname as the agent reports it at every cycle: ``/etc/hostname``
    (or this machine's name), None when it is not one the server accepts."""
    name = (_read(root / "etc/hostname") or socket.gethostname()).strip()[:255]
    return name if re.fullmatch(HOSTNAME, name) else None
