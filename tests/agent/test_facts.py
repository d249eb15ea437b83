"""Device facts read from a fake sysfs tree, and the ``--facts`` override."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lamina.agent import facts as facts_mod
from lamina.agent.facts import gather, hardware, load_override, package_facts
from lamina.errors import UsageError
from lamina.protocol.schemas import FACTS_FORMAT, MAX_MODALIASES, HardwareFacts

RTL = "pci:v000010ECd00008168sv00001043sd00008677bc02sc00i00"
AHCI = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
USB = "usb:v0627p0001d0000dc00dsc00dp00ic03isc00ip00in00"


def fake_sysfs(tmp: Path) -> Path:
    sys = tmp / "sys"
    dmi = sys / "class/dmi/id"
    dmi.mkdir(parents=True)
    for k, v in {
        "sys_vendor": "LENOVO",
        "product_name": "20BWS03B00",
        "product_version": "ThinkPad T450s",
        "product_family": "ThinkPad T450s",
        "board_vendor": "LENOVO",
        "board_name": "20BWS03B00",
        "bios_vendor": "LENOVO",
        "bios_version": "JBET71WW (1.35 )",
        "chassis_type": "10",
    }.items():
        (dmi / k).write_text(v + "\n")
    drv = sys / "bus/pci/drivers/ahci"
    drv.mkdir(parents=True)
    for slot, alias, cls in (
        ("0000:00:19.0", RTL, "0x020000"),
        ("0000:00:1f.2", AHCI, "0x010601"),
        ("0000:00:1f.3", RTL, "0x020000"),  # a second one: listed once
    ):
        d = sys / "bus/pci/devices" / slot
        d.mkdir(parents=True)
        (d / "modalias").write_text(alias + "\n")
        (d / "class").write_text(cls + "\n")
    os.symlink("../../drivers/ahci", sys / "bus/pci/devices/0000:00:1f.2/driver")
    u = sys / "bus/usb/devices/1-1:1.0"
    u.mkdir(parents=True)
    (u / "modalias").write_text(USB + "\n")
    (sys / "bus/usb/devices/usb1").mkdir()  # a hub without modalias: skipped
    hostile = sys / "bus/usb/devices/1-2"
    hostile.mkdir()
    (hostile / "modalias").write_bytes(b"usb:\x1b[31mred\n")  # control characters: dropped
    for name, mac in (("lo", "00:00:00:00:00:00"), ("enp0s25", "50:7B:9D:AA:BB:CC")):
        (sys / "class/net" / name).mkdir(parents=True)
        (sys / "class/net" / name / "address").write_text(mac + "\n")
    (sys / "block/sda").mkdir(parents=True)
    (sys / "block/sda/size").write_text("500118192\n")
    (sys / "block/loop0").mkdir()
    (sys / "block/loop0/size").write_text("8\n")
    (sys / "firmware/efi").mkdir(parents=True)
    (tmp / "proc").mkdir()
    (tmp / "proc/cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
    return sys


def endpoint(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("pc-one\n")
    (root / "etc/machine-id").write_text("ab" * 16 + "\n")
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    return root


def test_facts_from_a_fake_sysfs_tree(tmp_path: Path) -> None:
    f = gather(endpoint(tmp_path), fake_sysfs(tmp_path))
    assert (f.sys_vendor, f.product_name, f.product_version) == (
        "LENOVO",
        "20BWS03B00",
        "ThinkPad T450s",
    )
    assert f.bios_version == "JBET71WW (1.35 )" and f.chassis_type == "10"
    assert (f.vendor, f.model) == ("LENOVO", "20BWS03B00")
    assert f.modaliases == sorted([RTL, AHCI, USB])
    assert f.cpu_vendor == "GenuineIntel"
    assert f.boot_mode == "uefi"
    assert [(s.slot, s.driver, s.pci_class) for s in f.storage_controllers] == [
        ("0000:00:1f.2", "ahci", "0x010601")
    ]
    assert [(n.name, n.mac) for n in f.network] == [("enp0s25", "50:7b:9d:aa:bb:cc")]
    assert [(d.name, d.size) for d in f.disks] == [("sda", 500118192 * 512)]
    assert f.hostname == "pc-one" and f.os_release["ID"] == "debian"


def test_a_machine_without_dmi_or_efi(tmp_path: Path) -> None:
    empty = tmp_path / "nosys"
    empty.mkdir()
    f = gather(endpoint(tmp_path), empty)
    assert f.sys_vendor == "" and f.modaliases == [] and f.boot_mode == "bios"


def test_override_is_merged_over_detected_facts(tmp_path: Path) -> None:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps({"product_name": "OptiPlex 7090", "modaliases": [RTL]}))
    override = load_override(path)
    f = gather(endpoint(tmp_path), fake_sysfs(tmp_path), override)
    assert f.product_name == "OptiPlex 7090" and f.modaliases == [RTL]
    assert f.sys_vendor == "LENOVO"  # not overridden: still detected
    assert f.model == "OptiPlex 7090"  # the format-1 name follows the DMI one


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ("[1, 2]", "JSON object"),
        ('{"colour": "red"}', "unknown facts"),
        ('{"modaliases": "pci:v1"}', "not valid"),
        ('{"modaliases": ["has space"]}', "not valid"),
        ('{"product_name": "a\\u0007b"}', "not valid"),
        ('{"network": [{"name": "../../x", "mac": ""}]}', "not valid"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_override_files_are_refused(tmp_path: Path, doc: str, why: str) -> None:
    path = tmp_path / "facts.json"
    path.write_text(doc)
    with pytest.raises(UsageError, match=why):
        load_override(path)


def test_hostile_sysfs_is_bounded(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    (sys / "class/dmi/id").mkdir(parents=True)
    (sys / "class/dmi/id/product_name").write_text("x" * 100_000)  # over the attribute bound
    devs = sys / "bus/pci/devices"
    for i in range(MAX_MODALIASES + 50):
        d = devs / f"0000:{i:06x}"
        d.mkdir(parents=True)
        (d / "modalias").write_text(f"pci:v{i:08X}d00000001\n")
    doc = hardware(sys)
    assert doc["product_name"] == "x" * 255
    assert len(doc["modaliases"]) == MAX_MODALIASES
    HardwareFacts(machine_id="m", hostname="h", **doc)  # what the agent sends validates


def _nic(sys: Path, name: str, device: str | None, driver: str | None, mac: str) -> None:
    """A NIC laid out as sysfs lays it: ``class/net/NAME`` links into ``devices/``, where
    ``device`` links to its bus device and that one's ``driver`` to its driver."""
    where = sys / "devices" / (device or "virtual") / "net" / name
    where.mkdir(parents=True)
    (where / "address").write_text(mac + "\n")
    if device is not None:
        os.symlink("../..", where / "device")
        if driver is not None:
            drv = sys / "bus/pci/drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            os.symlink(
                os.path.relpath(drv, sys / "devices" / device), sys / "devices" / device / "driver"
            )
    (sys / "class/net").mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(where, sys / "class/net"), sys / "class/net" / name)


def test_nics_carry_bus_address_path_and_driver(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    _nic(sys, "enp3s0", "pci0000:00/0000:00:1c.0/0000:03:00.0", "e1000e", "52:54:00:00:00:03")
    _nic(sys, "enx1", "pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0", "cdc_ether", "52:54:00:00:00:04")
    _nic(sys, "eth0", "pci0000:00/0000:00:03.0/virtio2", "virtio_net", "52:54:00:00:00:05")
    _nic(sys, "br0", None, None, "52:54:00:00:00:06")  # virtual: no device
    f = gather(endpoint(tmp_path), sys)
    assert f.facts_format == FACTS_FORMAT == 4
    got = {n.name: (n.bus, n.path, n.driver) for n in f.network}
    assert got == {
        "enp3s0": ("0000:03:00.0", "pci-0000:03:00.0", "e1000e"),
        "enx1": ("1-2:1.0", "pci-0000:00:14.0-usb-0:2:1.0", "cdc_ether"),
        "eth0": ("0000:00:03.0", "pci-0000:00:03.0", "virtio_net"),
        "br0": ("", "", ""),
    }


def test_facts_of_an_older_agent_are_read_as_format_2() -> None:
    doc = {"machine_id": "m", "hostname": "h", "network": [{"name": "eth0", "mac": "aa:bb"}]}
    f = HardwareFacts(**doc)
    assert f.facts_format == 2 and f.network[0].path == "" and f.network[0].driver == ""


def test_hostile_nic_links_are_dropped(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    _nic(sys, "eth0", "pci0000:00/0000:00:19.0", None, "52:54:00:00:00:01")
    os.symlink(
        "../../../../../../../etc/$(reboot)\x1b[31m", sys / "devices/pci0000:00/0000:00:19.0/driver"
    )
    (sys / "class/net/eth1").mkdir()
    os.symlink("/" + "/".join(["a" * 200] * 15), sys / "class/net/eth1/device")
    doc = hardware(sys)
    HardwareFacts(machine_id="m", hostname="h", **doc)  # what the agent sends validates
    got = {n["name"]: (n["bus"], n["path"], n["driver"]) for n in doc["network"]}
    assert got == {"eth0": ("0000:00:19.0", "pci-0000:00:19.0", ""), "eth1": ("", "", "")}


def _dpkg(root: Path, text: str | bytes) -> Path:
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_bytes(text.encode() if isinstance(text, str) else text)
    return status


STATUS = (
    "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13\n\n"
    "Package: old-tool\nStatus: deinstall ok config-files\nVersion: 0.1\n\n"
    "Package: adduser\nStatus: install ok installed\nArchitecture: all\nVersion: 3.134\n"
)


def test_a_pending_agent_reports_its_installed_packages_in_dpkg_order(tmp_path: Path) -> None:
    """Facts format 4: the installed packages (name, version, arch) in the database's
    order; one removed with its configuration kept is not installed."""
    _dpkg(tmp_path / "root", STATUS)
    sysfs = fake_sysfs(tmp_path)
    f = gather(tmp_path / "root", sysfs, packages=True)
    assert f.facts_format == 4 and f.packages is not None
    assert f.packages.database == "read"
    assert [p.model_dump() for p in f.packages.installed] == [
        {"name": "zlib1g", "version": "1:1.2.13", "arch": "amd64"},
        {"name": "adduser", "version": "3.134", "arch": "all"},
    ]
    # An active agent reports none; facts of format 3 (no list) are still read.
    assert gather(tmp_path / "root", sysfs).packages is None
    old = HardwareFacts(machine_id="m", hostname="h", facts_format=3)
    assert old.packages is None and old.facts_format == 3


def test_a_hostile_dpkg_database_is_read_as_staging_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What staging could not read either is ``none`` (nothing would be carried); rows
    outside dpkg's syntax or past the bounds make the list ``partial`` (empty)."""
    root = tmp_path / "root"
    assert package_facts(root) == {"database": "none", "installed": []}  # no database
    status = _dpkg(root, STATUS)
    secret = tmp_path / "secret"
    secret.write_text(STATUS)
    status.unlink()
    status.symlink_to(secret)  # a link is not followed
    assert package_facts(root)["database"] == "none"
    status.unlink()
    os.mkfifo(status)  # never opened for a read that blocks: not a regular file
    assert package_facts(root)["database"] == "none"
    status.unlink()
    for junk in (b"Package: a\n  broken continuation\n\x00\xff", b"Package: a\nPackage: b\n"):
        _dpkg(root, junk)  # not deb822, a field given twice: staging reads no database
        assert package_facts(root) == {"database": "none", "installed": []}
    _dpkg(root, "Package: Bad Name\nStatus: install ok installed\nVersion: 1\n")
    assert package_facts(root) == {"database": "partial", "installed": []}
    _dpkg(root, "Package: tool\nStatus: install ok installed\nVersion: 1\x1b[31m\n")
    assert package_facts(root) == {"database": "partial", "installed": []}
    _dpkg(root, STATUS)
    monkeypatch.setattr(facts_mod, "MAX_PACKAGES", 1)
    assert package_facts(root) == {"database": "partial", "installed": []}
    monkeypatch.setattr(facts_mod, "MAX_PACKAGES", 10)
    monkeypatch.setattr(facts_mod, "PACKAGES_BUDGET", 60)  # about one row of JSON
    assert package_facts(root) == {"database": "partial", "installed": []}
    monkeypatch.setattr(facts_mod, "MAX_READ", len(STATUS) - 1)  # larger than staging reads
    assert package_facts(root) == {"database": "none", "installed": []}
    # Whatever it found, the facts are valid: the server takes them.
    HardwareFacts(machine_id="m", hostname="h", packages=package_facts(root))
