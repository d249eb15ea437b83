"""Read a VM folder before registering it as a flex image: its disk, memory, CPUs, firmware.

A folder holds disks and a VMware ``.vmx`` or a libvirt domain XML. Both are read as
hostile: the XML is refused if it declares a DTD or entities (no entity expansion), and
a disk path must stay inside the folder.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import UnsafePathError, UsageError

MAX_CONFIG = 1024 * 1024
DISK_SUFFIXES = (".qcow2", ".vmdk", ".raw", ".img")


@dataclass
class VmConfig:
    disk: Path
    memory_mib: int | None = None
    cpus: int | None = None
    firmware: str | None = None


def _inside(folder: Path, name: str) -> Path:
    p = (folder / name).resolve()
    if not p.is_relative_to(folder.resolve()):
        raise UnsafePathError(f"the VM's disk {name!r} is outside its folder {folder}")
    if not p.is_file():
        raise UsageError(f"the VM's disk {name!r} is not in {folder}")
    return p


def _read(path: Path) -> str:
    if path.stat().st_size > MAX_CONFIG:
        raise UsageError(f"{path} is larger than {MAX_CONFIG} bytes: not a VM configuration")
    return path.read_text(errors="replace")


def parse_vmx(path: Path) -> VmConfig:
    """A VMware ``.vmx``: ``memsize``, ``numvcpus``, ``firmware``, the first present disk."""
    kv: dict[str, str] = {}
    for line in _read(path).splitlines():
        m = re.match(r'^\s*([A-Za-z0-9_:.]+)\s*=\s*"(.*)"\s*$', line)
        if m:
            kv[m.group(1).lower()] = m.group(2)
    disks = [
        v
        for k, v in kv.items()
        if k.endswith(".filename")
        and v.lower().endswith(".vmdk")
        and kv.get(k.removesuffix(".filename") + ".present", "true").lower() != "false"
    ]
    if not disks:
        raise UsageError(f"{path.name} names no present .vmdk disk")
    return VmConfig(
        disk=_inside(path.parent, disks[0]),
        memory_mib=int(kv["memsize"]) if kv.get("memsize", "").isdigit() else None,
        cpus=int(kv["numvcpus"]) if kv.get("numvcpus", "").isdigit() else None,
        firmware="uefi" if kv.get("firmware", "").lower() == "efi" else "bios",
    )


_UNITS = {"b": 1 / 1024 / 1024, "bytes": 1 / 1024 / 1024, "kib": 1 / 1024, "k": 1 / 1024}
_UNITS |= {"mib": 1, "m": 1, "gib": 1024, "g": 1024, "tib": 1024 * 1024}


def parse_libvirt(path: Path) -> VmConfig:
    """A libvirt domain XML: ``memory``, ``vcpu``, ``os firmware='efi'`` or a loader, the first disk."""
    text = _read(path)
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise UsageError(f"{path.name} declares a DTD or entities: refused")
    try:
        root = ET.fromstring(text)  # noqa: S314 - no DTD, no entities (checked above)
    except ET.ParseError as e:
        raise UsageError(f"{path.name} is not well-formed XML: {e}") from e
    if root.tag != "domain":
        raise UsageError(f"{path.name} is not a libvirt domain (root element {root.tag!r})")
    disk = None
    for d in root.iterfind("./devices/disk"):
        src = d.find("source")
        if d.get("device", "disk") == "disk" and src is not None and src.get("file"):
            disk = src.get("file")
            break
    if disk is None:
        raise UsageError(f"{path.name} names no file-backed disk")
    memory = None
    mem = root.find("memory")
    if mem is not None and (mem.text or "").strip().isdigit():
        factor = _UNITS.get((mem.get("unit") or "KiB").lower(), 1 / 1024)
        memory = int(int((mem.text or "0").strip()) * factor)
    vcpu = root.find("vcpu")
    cpus = (
        int((vcpu.text or "").strip())
        if vcpu is not None and (vcpu.text or "").strip().isdigit()
        else None
    )
    os_el = root.find("os")
    uefi = os_el is not None and (
        os_el.get("firmware") == "efi" or os_el.find("loader") is not None
    )
    return VmConfig(
        disk=_inside(path.parent, Path(disk).name if Path(disk).is_absolute() else disk),
        memory_mib=memory,
        cpus=cpus,
        firmware="uefi" if uefi else "bios",
    )


def read_vm(path: Path) -> VmConfig:
    """A disk file as it is, or a VM folder read through its ``.vmx`` or domain XML."""
    if path.is_file():
        return VmConfig(disk=path)
    if not path.is_dir():
        raise UsageError(f"{path} is neither a disk image nor a VM folder")
    vmx = sorted(path.glob("*.vmx"))
    if vmx:
        return parse_vmx(vmx[0])
    xml = sorted(path.glob("*.xml"))
    if xml:
        return parse_libvirt(xml[0])
    disks = sorted(p for p in path.iterdir() if p.suffix.lower() in DISK_SUFFIXES)
    if len(disks) == 1:
        return VmConfig(disk=disks[0])
    raise UsageError(f"{path} has no .vmx or domain XML, and not exactly one disk")
