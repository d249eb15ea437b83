"""Hardware and OS facts an agent reports at enrollment, read from its root where possible."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import socket
from pathlib import Path

from lamina import __version__
from lamina.protocol.schemas import HOSTNAME, HardwareFacts

_DMI = Path("/sys/class/dmi/id")


def _read(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text().strip()
    return ""


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


def gather(root: Path) -> HardwareFacts:
    """Facts of the endpoint whose file system is ``root`` (``/`` on a real machine)."""
    machine_id = _read(root / "etc/machine-id") or _read(root / "var/lib/dbus/machine-id")
    hostname = _read(root / "etc/hostname") or socket.gethostname()
    if not machine_id:
        # A directory endpoint without one: derive a stable id from where it lives.
        machine_id = hashlib.sha256(
            f"{socket.gethostname()}:{root.resolve()}".encode()
        ).hexdigest()[:32]
    try:
        disk = shutil.disk_usage(root).total
    except OSError:
        disk = 0
    return HardwareFacts(
        machine_id=machine_id[:128],
        hostname=hostname[:255],
        vendor=_read(_DMI / "sys_vendor")[:255],
        model=_read(_DMI / "product_name")[:255],
        os_release=os_release(root),
        disk_size=disk,
        agent_version=__version__,
    )


def current_hostname(root: Path) -> str | None:
    """The endpoint's hostname as the agent reports it at every cycle: ``/etc/hostname``
    (or this machine's name), None when it is not one the server accepts."""
    name = (_read(root / "etc/hostname") or socket.gethostname()).strip()[:255]
    return name if re.fullmatch(HOSTNAME, name) else None
