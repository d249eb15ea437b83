"""Two machines made from one Debian root: own identity, own disks, own network bindings.

Each is a folder endpoint (a fresh copy of the cached root from ``tests.vm.debian``) that
differs from the other exactly where real machines do: hostname and machine id (carried
by a full migration), the filesystem UUIDs its ``/etc/fstab`` names (the root's and a
small data disk's, mounted on ``/srv/data``), and the name and MAC address of its network
interface (a systemd ``.link`` file naming it, ``/etc/network/interfaces`` configuring it):
those are hardware-bound and must stay the new machine's. A wrong fstab shows up in the
VM as a missing ``/srv/data`` mount (the entry is ``nofail`` with a 60 s device timeout,
so the boot still reaches the probe), a wrong interface file as a failed
``networking.service`` (``auto`` on an interface that does not exist).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    hostname: str
    machine_id: str
    root_uuid: str
    data_uuid: str
    iface: str
    mac: str
    user: str

    def fstab(self) -> str:
        return (
            f"UUID={self.root_uuid} / ext4 errors=remount-ro 0 1\n"
            f"UUID={self.data_uuid} /srv/data ext4 defaults,nofail,x-systemd.device-timeout=60s 0 2\n"
        )


OLD = Machine(
    hostname="ada-workstation",
    machine_id="a1" * 16,
    root_uuid="0a0a0a0a-1111-4111-8111-0a0a0a0a0a0a",
    data_uuid="0a0a0a0a-2222-4222-8222-0a0a0a0a0a0a",
    iface="wan7",
    mac="52:54:00:aa:00:07",
    user="ada",
)
NEW = Machine(
    hostname="replacement-0042",
    machine_id="b2" * 16,
    root_uuid="0b0b0b0b-1111-4111-8111-0b0b0b0b0b0b",
    data_uuid="0b0b0b0b-2222-4222-8222-0b0b0b0b0b0b",
    iface="lan0",
    mac="52:54:00:bb:00:42",
    user="setup",
)


def make_machine(root: Path, m: Machine) -> Path:
    """Give a fresh copy of the Debian root ``m``'s identity, disks, network and user data."""
    etc = root / "etc"
    (etc / "hostname").write_text(m.hostname + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{m.hostname}\n")
    (etc / "machine-id").write_text(m.machine_id + "\n")
    (etc / "fstab").write_text(m.fstab())
    (root / "srv/data").mkdir(parents=True, exist_ok=True)
    net = etc / "systemd/network"
    net.mkdir(parents=True, exist_ok=True)
    (net / f"10-{m.iface}.link").write_text(
        f"[Match]\nMACAddress={m.mac}\n\n[Link]\nName={m.iface}\n"
    )
    (etc / "network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\n"
        f"auto {m.iface}\niface {m.iface} inet static\n    address 10.0.2.15/24\n"
    )
    home = root / "home" / m.user
    home.mkdir(parents=True, exist_ok=True)
    (home / "notes.txt").write_text(f"{m.user}'s notes on {m.hostname}\n")
    os.chown(home, 1000, 1000)
    os.chown(home / "notes.txt", 1000, 1000)
    return root
