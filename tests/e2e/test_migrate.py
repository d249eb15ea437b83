"""Hardware migration end to end through the CLI: a real server, real agents on folder
endpoints with real dpkg databases. The old machine's CVD is archived, a replacement
enrolls and waits pending, the CVD migrates onto it (dry run first), the replacement
stages the boot set, boots, confirms, and streams the user data in."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Deployment, Lamina
from tests.e2e.debs import build_deb, dpkg_install, dpkg_installed, init_dpkg


def _machine(root: Path, host: str, uuid: str, nic: str, mac: str) -> Path:
    """A small Debian-like root with a dpkg database; the disk, NIC and identity are its own."""
    for d in ("etc/ssh", "etc/network", "etc/udev/rules.d", "usr/bin", "boot/grub", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n')
    (root / "usr/bin/ls").write_bytes(b"\x7fELF ls " * 4000)
    (root / "etc/hostname").write_text(host + "\n")
    (root / "etc/machine-id").write_text(f"{host:0>32}\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text(f"host key of {host}\n")
    (root / "etc/fstab").write_text(f"UUID={uuid} / ext4 errors=remount-ro 0 1\n")
    (root / "boot/grub/grub.cfg").write_text(f"linux /vmlinuz root=UUID={uuid} ro\n")
    (root / "etc/network/interfaces").write_text(f"auto {nic}\niface {nic} inet dhcp\n")
    (root / "etc/udev/rules.d/70-persistent-net.rules").write_text(
        f'SUBSYSTEM=="net", ATTR{{address}}=="{mac}", NAME="{nic}"\n'
    )
    init_dpkg(root)
    return root


REALTEK = "pci:v000010ECd00008168sv00001043sd00008677bc02sc00i00"
AHCI = {
    "slot": "0000:00:17.0",
    "modalias": "pci:v00008086d00002822sv00001028sd00000A2Cbc01sc04i00",
    "driver": "ahci",
}
NVME = {
    "slot": "0000:01:00.0",
    "modalias": "pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02",
    "driver": "nvme",
}
FACTS: dict[object, dict[str, object]] = {
    "old": {
        "sys_vendor": "Dell Inc.",
        "product_name": "OptiPlex 7090",
        "modaliases": [],
        "storage_controllers": [AHCI],
        # facts format 3: where each NIC sits and its driver
        "network": [
            {
                "name": "enp0s3",
                "mac": "52:54:00:00:00:01",
                "bus": "0000:00:03.0",
                "path": "pci-0000:00:03.0",
                "driver": "e1000e",
            },
        ],
    },
    1: {
        "sys_vendor": "LENOVO",
        "product_name": "20BWS03B00",
        "modaliases": [REALTEK],
        "storage_controllers": [NVME],
        # A Wi-Fi card listed first: the wired NIC of the same driver is the one mapped.
        "network": [
            {"name": "wlp2s0", "mac": "52:54:00:00:00:81", "driver": "iwlwifi"},
            {
                "name": "eno1",
                "mac": "52:54:00:00:00:91",
                "bus": "0000:00:1f.6",
                "path": "pci-0000:00:1f.6",
                "driver": "e1000e",
            },
        ],
    },
    # HP desks whose NICs were not reported: the old NIC maps to none of them.
    2: {"sys_vendor": "HP", "product_name": "EliteDesk 800 G6", "modaliases": [], "network": []},
    3: {"sys_vendor": "HP", "product_name": "EliteDesk 800 G6", "modaliases": [], "network": []},
}
#: The old machine's own network settings: a static address on its NIC, for ifupdown and NM.
STATIC = (
    "auto {nic}\n"
    "iface {nic} inet static\n"
    "    address 192.0.2.10/24\n"
    "    gateway 192.0.2.1\n"
    "    hwaddress ether {mac}\n"
)
KEYFILE = (
    "[connection]\nid=office\ntype=ethernet\ninterface-name={nic}\n\n"
    "[ethernet]\nmac-address={mac}\n\n"
    "[ipv4]\naddress1=192.0.2.10/24,192.0.2.1\nmethod=manual\n"
)
FW = b"\x7fRTL8168H firmware" * 512


def _enroll(
    agent: Lamina, url: str, token: str, root: Path, state: Path, facts: dict[str, object]
) -> str:
    facts_file = state.parent / f"{state.name}-facts.json"
    facts_file.write_text(json.dumps(facts))
    out = agent.json(
        "agent", "enroll", "--server", url, "--token", token,
        "--root", str(root), "--state", str(state), "--facts", str(facts_file),
    )  # fmt: skip
    return str(out["device_id"])


def _device(admin: Lamina, did: str) -> dict[str, object]:
    return next(d for d in admin.json("device", "list") if d["id"] == did)


@pytest.fixture
def old_machine(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> tuple[Lamina, Path, Path]:
    """desk-01, centralized and synced, with a user-installed package and user data."""
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "std", "--keep-last", "10")
    token = admin.json("token", "create", "--policy", "std")["token"]
    old = _machine(tmp_path / "old", "desk-01", "1111-aaaa", "enp0s3", "52:54:00:00:00:01")
    debs = tmp_path / "debs"
    debs.mkdir()
    deb = build_deb(debs, "user-game", "0.9", {"/usr/games/user-game": "#!/bin/sh\necho fun\n"})
    dpkg_install(old, deb)
    (old / "home/ann/Documents").mkdir(parents=True)
    (old / "home/ann/Documents/thesis.txt").write_text("ann's thesis, chapter 1\n" * 300)
    (old / "home/ann/.bashrc").write_text("alias ll='ls -l'\n")
    own = {"nic": "enp0s3", "mac": "52:54:00:00:00:01"}
    (old / "etc/network/interfaces").write_text(STATIC.format(**own))
    (old / "etc/NetworkManager/system-connections").mkdir(parents=True)
    (old / "etc/NetworkManager/system-connections/office.nmconnection").write_text(
        KEYFILE.format(**own)
    )
    state, agent = tmp_path / "old-state", person("old-agent")
    _enroll(agent, embedded.url, token, old, state, FACTS["old"])
    # A driver pack for the Lenovo replacement's Realtek NIC, and its profile.
    pack = tmp_path / "rtl-pack"
    (pack / "lib/firmware/rtl_nic").mkdir(parents=True)
    (pack / "lib/firmware/rtl_nic/rtl8168h-2.fw").write_bytes(FW)
    (pack / "etc/modprobe.d").mkdir(parents=True)
    (pack / "etc/modprobe.d/r8169.conf").write_text("options r8169 aspm=0\n")
    admin.json("driver", "import", "rtl-fw", str(pack))
    admin.run(
        "driver", "profile", "create", "lenovo-realtek", "--pack", "rtl-fw",
        "--match", "sys_vendor=lenovo", "--match", "modalias=pci:v000010ECd*",
    )  # fmt: skip
    agent.run("agent", "run", "--once", "--state", str(state))
    return agent, old, state


def _replacement(
    embedded: Deployment,
    admin: Lamina,
    person: Callable[[str], Lamina],
    tmp_path: Path,
    n: int,
    debs: tuple[Path, ...] = (),
) -> tuple[Lamina, Path, Path, str]:
    """A fresh minimal install with the agent (and ``debs`` installed): enrolled without a
    policy, so it waits pending, its packages reported with its facts."""
    token = admin.json("token", "create")["token"]
    root = _machine(
        tmp_path / f"new{n}", f"fresh-{n}", f"2222-bbb{n}", "eno1", f"52:54:00:00:00:9{n}"
    )
    for deb in debs:
        dpkg_install(root, deb)
    (root / "usr/bin/installer-only").write_text("left by the minimal install\n")
    (root / "home/ann").mkdir()
    (root / "home/ann/.bashrc").write_text("# written on the new machine already\n")
    state, agent = tmp_path / f"new{n}-state", person(f"new{n}-agent")
    did = _enroll(agent, embedded.url, token, root, state, FACTS[n])
    agent.run("agent", "run", "--once", "--state", str(state))  # reports its free space
    return agent, root, state, did


@pytest.mark.e2e
def test_full_migration_onto_a_replacement(
    embedded: Deployment,
    person: Callable[[str], Lamina],
    tmp_path: Path,
    old_machine: tuple[Lamina, Path, Path],
) -> None:
    old_agent, old, old_state = old_machine
    admin = person("admin").login(embedded.url)
    before = admin.json("cvd", "show", "desk-01")
    bound = admin.json("layer", "rules-test", "desk-01")["hardware_bound"]  # the rule set, tested
    assert "/etc/fstab" in bound["rules"] and "/etc/fstab" in bound["examples"]
    admin.run("cvd", "archive", "desk-01")  # the machine died
    # The replacement came with a newer build of the old machine's user-installed game.
    (tmp_path / "debs-new").mkdir()
    game = build_deb(tmp_path / "debs-new", "user-game", "1.0", {"/usr/games/user-game": "v1\n"})
    agent, new, state, did = _replacement(embedded, admin, person, tmp_path, 1, (game,))
    assert _device(admin, did)["status"] == "pending"
    reported = admin.json("device", "show", did)["facts"]["packages"]
    assert reported == {
        "database": "read",
        "installed": [{"name": "user-game", "version": "1.0", "arch": "all"}],
    }
    # Without --base, the apps-data dry run foresees from them what staging will decide.
    apps = admin.json(
        "cvd", "migrate", "desk-01", "--to", did, "--mode", "apps-data", "--keep-base", "--dry-run"
    )  # --keep-base: a no-op, the CVD has no base layer
    assert apps["packages_carried"] == {} and apps["warnings"] == []
    assert apps["package_conflicts"] == [
        {"package": "user-game", "cvd": "0.9", "new": "1.0", "wins": "new"}
    ]

    dry = admin.json("cvd", "migrate", "desk-01", "--to", did, "--mode", "full", "--dry-run")
    assert dry["status"] == "dry-run" and dry["blocking"] == [] and dry["task"] is None
    assert {"/etc/fstab", "/boot/grub/grub.cfg"} <= set(dry["kept_from_new_machine"])
    # The network settings are the CVD's, carried onto the new NIC: one line per interface.
    assert "/etc/network/interfaces" not in dry["kept_from_new_machine"]
    assert dry["network"] == [
        "enp0s3 (52:54:00:00:00:01) -> eno1 (52:54:00:00:00:91): same driver, in order"
    ]
    assert dry["network_map"] == [{"old": "enp0s3", "new": "eno1", "rule": "same driver, in order"}]
    assert dry["packages_carried"] == {"user-game": "0.9"}
    assert dry["driver_packs"] == ["rtl-fw:1"] and dry["warnings"] == []
    assert dry["rebuild_initramfs"]  # AHCI there, NVMe here
    assert 0 < dry["space_needed"] <= dry["disk_free"]
    assert dry["stream_bytes"] >= len("ann's thesis, chapter 1\n") * 300
    assert (new / "etc/hostname").read_text() == "fresh-1\n"  # a dry run changes nothing

    res = admin.json("cvd", "migrate", "desk-01", "--to", did, "--mode", "full", "--keep-name")
    assert res["status"] == "queued" and res["task"]
    # A gc before the new machine comes for it keeps the tree the migration delivers (the
    # snapshot's with the new machine's files, network and driver pack laid over it: no
    # snapshot names it), and the old machine's ownership of what its snapshots hold.
    admin.run("store", "gc", *embedded.store_args)
    cvd = admin.json("cvd", "show", "desk-01")
    assert cvd["device_id"] == did and cvd["state"] == "active"
    assert cvd["snapshots"] == before["snapshots"] and cvd["policy"] == before["policy"]
    refused = old_agent.run("agent", "run", "--once", "--state", str(old_state), ok=False)
    assert refused.returncode == 1 and "replaced" in refused.stderr  # the old credential is dead

    agent.run("agent", "run", "--once", "--state", str(state))
    task = admin.json("task", "show", res["task"])
    assert task["state"] == "waiting" and task["result"]["mode"] == "full"
    assert (new / "etc/hostname").read_text() == "fresh-1\n"  # staged, not applied yet
    [applied] = agent.json("agent", "boot", "--state", str(state))
    assert applied["initramfs"] == "scheduled"  # the marker; a folder has no initramfs to build
    assert (new / "etc/hostname").read_text() == "desk-01\n"
    status = agent.json("agent", "status", "--state", str(state))
    assert status["awaiting_confirmation"] and status["stream"]
    agent.run("agent", "run", "--once", "--state", str(state))  # confirms, streams, syncs

    # Identity and software are the old machine's; disks, boot and NICs stay the new one's.
    assert (new / "etc/machine-id").read_text() == (old / "etc/machine-id").read_text()
    assert (new / "etc/ssh/ssh_host_ed25519_key").read_text() == "host key of desk-01\n"
    assert (new / "etc/fstab").read_text() == "UUID=2222-bbb1 / ext4 errors=remount-ro 0 1\n"
    assert "root=UUID=2222-bbb1" in (new / "boot/grub/grub.cfg").read_text()
    # The old machine's static address, on the new machine's NIC name and MAC.
    now = {"nic": "eno1", "mac": "52:54:00:00:00:91"}
    assert (new / "etc/network/interfaces").read_text() == STATIC.format(**now)
    nm = new / "etc/NetworkManager/system-connections/office.nmconnection"
    assert nm.read_text() == KEYFILE.format(**now)
    assert "52:54:00:00:00:91" in (new / "etc/udev/rules.d/70-persistent-net.rules").read_text()
    assert dpkg_installed(new) == {"user-game": "0.9"}
    assert (new / "usr/games/user-game").exists()
    assert not (new / "usr/bin/installer-only").exists()
    # The pack its profile matches (a Lenovo with a Realtek NIC) came with the system.
    assert (new / "lib/firmware/rtl_nic/rtl8168h-2.fw").read_bytes() == FW
    assert (new / "etc/modprobe.d/r8169.conf").read_text() == "options r8169 aspm=0\n"
    # User data streamed in; the file the new machine already had was never overwritten.
    assert (new / "home/ann/Documents/thesis.txt").read_text() == "ann's thesis, chapter 1\n" * 300
    assert (new / "home/ann/.bashrc").read_text() == "# written on the new machine already\n"
    done = admin.json("task", "show", res["task"])
    assert done["state"] == "done" and done["progress"] == 100, done
    assert done["result"]["stream"]["kept_local"] == 1
    status = agent.json("agent", "status", "--state", str(state))
    assert status["awaiting_confirmation"] == [] and status.get("stream") is None
    assert admin.json("cvd", "show", "desk-01")["snapshots"] == before["snapshots"] + 1

    # Disaster recovery on the machine itself: its system damaged, the CVD's full system
    # is laid back from the last snapshot; the disk and NIC bindings stay its own.
    (new / "usr/games/user-game").unlink()
    (new / "etc/machine-id").write_text("damaged\n")
    dry = admin.json("cvd", "restore-system", "desk-01", "--to", did, "--dry-run")
    assert dry["status"] == "dry-run" and dry["blocking"] == [] and dry["mode"] == "full"
    res = admin.json("cvd", "restore-system", "desk-01", "--to", did)
    agent.run("agent", "run", "--once", "--state", str(state))
    agent.run("agent", "boot", "--state", str(state))
    agent.run("agent", "run", "--once", "--state", str(state))
    assert admin.json("task", "show", res["task"])["state"] == "done"
    assert (new / "usr/games/user-game").exists()
    assert (new / "etc/machine-id").read_text() == (old / "etc/machine-id").read_text()
    assert (new / "etc/fstab").read_text() == "UUID=2222-bbb1 / ext4 errors=remount-ro 0 1\n"


@pytest.mark.e2e
def test_unconfirmed_boot_rolls_back_then_data_mode(
    embedded: Deployment,
    person: Callable[[str], Lamina],
    tmp_path: Path,
    old_machine: tuple[Lamina, Path, Path],
) -> None:
    admin = person("admin").login(embedded.url)
    snapshots = admin.json("cvd", "show", "desk-01")["snapshots"]
    agent, new, state, did = _replacement(embedded, admin, person, tmp_path, 2)
    dry = admin.json("cvd", "migrate", "desk-01", "--to", did, "--dry-run")
    assert dry["driver_packs"] == []  # an HP: the Lenovo's pack is never applied here
    assert "no driver profile matches" in dry["warnings"][0]
    # No NIC of the new machine is known: its own network settings are kept, and said so.
    assert dry["network"][0].startswith("enp0s3 (52:54:00:00:00:01): not mapped")
    assert "/etc/network/interfaces" in dry["kept_from_new_machine"]
    res = admin.json("cvd", "migrate", "desk-01", "--to", did, "--mode", "full")
    agent.run("agent", "run", "--once", "--state", str(state))
    agent.run("agent", "boot", "--state", str(state))
    assert (new / "etc/hostname").read_text() == "desk-01\n"
    # The system never comes up healthy: the agent runs but the check fails, twice rebooted.
    agent.run("agent", "run", "--once", "--boot-check", "false", "--state", str(state))
    assert admin.json("task", "show", res["task"])["state"] == "waiting"
    agent.run("agent", "boot", "--state", str(state))
    assert (new / "etc/hostname").read_text() == "desk-01\n"  # one unconfirmed boot: kept
    rolled = agent.json("agent", "boot", "--state", str(state))
    assert rolled[0]["unconfirmed"] and "rolled back" in rolled[0]["error"]
    assert (new / "etc/hostname").read_text() == "fresh-2\n"  # wholly as it was
    assert (new / "usr/bin/installer-only").exists()
    assert not (new / "home/ann/Documents").exists()
    assert not (new / "lib/firmware").exists()
    agent.run("agent", "run", "--once", "--state", str(state))
    failed = admin.json("task", "show", res["task"])
    assert failed["state"] == "failed" and "without confirming a healthy boot" in failed["message"]
    # A machine that never became the CVD's is never synced into its history.
    assert admin.json("cvd", "show", "desk-01")["snapshots"] == snapshots

    # Data mode onto a third machine: only the user area travels, identity stays its own.
    agent3, new3, state3, did3 = _replacement(embedded, admin, person, tmp_path, 3)
    # The CVD sits on HP #2 but never ran there: the hardware compared is the Dell it last ran on.
    full = admin.json("cvd", "migrate", "desk-01", "--to", did3, "--mode", "full", "--dry-run")
    assert "(dell inc. optiplex 7090)" in full["warnings"][0]
    dry = admin.json("cvd", "migrate", "desk-01", "--to", did3, "--mode", "data", "--dry-run")
    assert dry["packages_not_carried"] == {"user-game": "0.9"} and dry["boot_set_bytes"] == 0
    res = admin.json("cvd", "migrate", "desk-01", "--to", did3, "--mode", "data", "--name", "ann")
    assert admin.json("cvd", "show", "ann")["device_id"] == did3
    assert _device(admin, did)["status"] == "replaced"
    agent3.run("agent", "run", "--once", "--state", str(state3))
    agent3.run("agent", "boot", "--state", str(state3))
    agent3.run("agent", "run", "--once", "--state", str(state3))
    assert (new3 / "etc/hostname").read_text() == "fresh-3\n"
    assert (new3 / "etc/machine-id").read_text() == f"{'fresh-3':0>32}\n"
    assert "user-game" not in dpkg_installed(new3)
    assert (new3 / "home/ann/Documents/thesis.txt").exists()
    assert admin.json("task", "show", res["task"])["state"] == "done"
    report = json.dumps(admin.json("task", "show", res["task"])["result"])
    assert "kept_local" in report
