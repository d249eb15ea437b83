"""The boot test: a Debian machine migrated onto another through the CLI boots under QEMU as
the old machine, on the new machine's disks and network, before its user data arrives.

Two machines from one debootstrapped Debian root (``tests.vm.machines``: own hostname,
machine id, fstab UUIDs, interface name and MAC) enroll as folder endpoints. The old one is
centralized, synced and archived; ``lamina cvd migrate --mode full`` lays it onto the new
one; the new machine's agent stages the boot set and ``agent boot`` applies it. That
folder -- the boot set over the new machine, no user data streamed yet -- becomes an ext4
image with the new machine's root UUID and boots under QEMU with its own kernel and
initramfs: it must reach multi-user.target with the old machine's hostname and machine id,
no failed unit (mounts included), ``/srv/data`` mounted from the new machine's data disk
and the network up on the new machine's interface, configured by the old machine's
settings rewritten for it. (The user data streams in afterwards:
``tests/e2e`` tests of the migration cover that.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Deployment, Lamina
from tests.vm import debian, qemu
from tests.vm.machines import NEW, OLD, make_machine

SKIP = qemu.qemu_missing()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(SKIP is not None, reason=f"the boot test needs QEMU: {SKIP}"),
    # A hang guard, not a threshold: the first run on a machine also debootstraps the root
    # (minutes), and TCG on a busy machine boots slowly.
    pytest.mark.timeout(1800),
]


def _boot(root: Path, work: Path) -> qemu.BootReport:
    """Boot ``root`` as the new machine's disk, beside the new machine's data disk."""
    work.mkdir(parents=True, exist_ok=True)
    qemu.install_probe(root)
    image = qemu.make_image(root, work / "root.img", NEW.root_uuid)
    empty = work / "data"
    empty.mkdir()
    data = qemu.make_image(empty, work / "data.img", NEW.data_uuid, label="data", slack_mb=8)
    kernel, initrd = debian.kernel_and_initrd(root)
    return qemu.boot(kernel, initrd, NEW.root_uuid, [image, data], work, mac=NEW.mac)


def test_migrated_machine_boots_as_the_old_one(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    qemu.require_tools()
    tar = debian.tarball()
    roots = {
        m.hostname: make_machine(debian.extract(tar, tmp_path / m.hostname), m) for m in (OLD, NEW)
    }
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "standard", "--interval", "1h", "--keep-last", "3")
    token = admin.json("token", "create", "--expires", "1h", "--uses", "2")["token"]
    agents, states = {}, {}
    for m in (OLD, NEW):
        host, root = m.hostname, roots[m.hostname]
        states[host] = str(tmp_path / f"{host}-state")
        agents[host] = person(f"agent-{host}")
        # Each folder endpoint reports its own machine's NIC (the host's would be the same
        # for both): the migration maps the old NIC onto the new one by these facts.
        facts = tmp_path / f"{host}-facts.json"
        facts.write_text(json.dumps({"network": [{"name": m.iface, "mac": m.mac}]}))
        agents[host].run(
            "agent", "enroll", "--server", embedded.url, "--token", token,
            "--root", str(root), "--state", states[host], "--facts", str(facts),
        )  # fmt: skip

    # The old machine is centralized and synced; it dies; its CVD is archived.
    admin.json("cvd", "centralize", OLD.hostname, "--policy", "standard")
    first = agents[OLD.hostname].json("agent", "run", "--once", "--state", states[OLD.hostname])
    assert first["synced"]
    admin.json("cvd", "archive", OLD.hostname)

    # Migrated in full onto the replacement: staged by its agent, applied at its boot.
    task = admin.json("cvd", "migrate", OLD.hostname, "--to", NEW.hostname, "--mode", "full")
    assert task["task"] and not task["blocking"]
    kept = {p.lstrip("/") for p in task["kept_from_new_machine"]}
    assert {"etc/fstab", f"etc/systemd/network/10-{OLD.iface}.link"} <= kept
    # The old machine's network settings are carried, rewritten onto the new NIC.
    assert "etc/network/interfaces" not in kept
    assert any(OLD.iface in line and NEW.iface in line for line in task["network"]), task
    new_root, new_agent = roots[NEW.hostname], agents[NEW.hostname]
    new_agent.run("agent", "run", "--once", "--state", states[NEW.hostname])
    new_agent.run("agent", "boot", "--state", states[NEW.hostname])
    assert (new_root / "etc/hostname").read_text() == OLD.hostname + "\n"
    interfaces = (new_root / "etc/network/interfaces").read_text()
    assert f"iface {NEW.iface} inet static" in interfaces and OLD.iface not in interfaces
    # Only the boot set so far: the old machine's user data has not streamed in yet.
    assert not (new_root / "home" / OLD.user / "notes.txt").exists()

    report = _boot(new_root, tmp_path / "vm")
    assert report.reported, f"no probe report ({report.accel}):\n{report.tail()}"
    assert report.fields["multi-user"] == "active", report.tail()
    assert report.fields["hostname"] == OLD.hostname
    assert report.fields["machine-id"] == OLD.machine_id
    assert report.failed == [], report.tail()
    # The new machine's disks (its fstab kept) and network (its interface binding kept, the
    # old machine's settings carried onto it).
    assert report.mounts["/"].split()[-1] == NEW.root_uuid
    assert report.mounts["/srv/data"].split()[-1] == NEW.data_uuid, report.tail()
    assert report.links[NEW.iface].split() == ["UP", NEW.mac]
    assert OLD.iface not in report.links
