"""Base-layer provisioning of a bare machine and an OS migration, end to end through the
CLI with real agents on folder endpoints carrying real dpkg databases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Deployment, Lamina
from tests.e2e.debs import build_deb, dpkg_install, dpkg_installed
from tests.e2e.test_migrate import FACTS, _enroll, _machine


def _os(root: Path, version: str) -> None:
    (root / "etc/os-release").write_text(
        f'NAME="Debian GNU/Linux"\nVERSION_ID="{version}"\nID=debian\n'
    )


@pytest.mark.e2e
def test_provision_then_migrate_os(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "std", "--keep-last", "10")
    ref_token = admin.json("token", "create", "--policy", "std", "--reference", "--uses", "2")[
        "token"
    ]
    debs = tmp_path / "debs"
    debs.mkdir()

    # Two reference machines: Debian 12 and Debian 13, each captured as a base layer.
    for version, tools in (("12", "1.0"), ("13", "2.0")):
        ref = _machine(
            tmp_path / f"ref{version}", f"ref-{version}", "9999", "eth0", "52:54:00:aa:00:01"
        )
        _os(ref, version)
        deb = build_deb(
            debs, "base-tools", tools, {"/usr/bin/base-tool": f"#!/bin/sh\necho {tools}\n"}
        )
        dpkg_install(ref, deb)
        if version == "12":  # a library Debian 12's base has and 13's has not
            lib = {"/usr/lib/shared-lib.so": "shared 1.0\n"}
            dpkg_install(ref, build_deb(debs, "shared-lib", "1.0", lib))
        st, agent = tmp_path / f"ref{version}-state", person(f"ref{version}")
        _enroll(agent, embedded.url, ref_token, ref, st, FACTS["old"])
        agent.run("agent", "run", "--once", "--state", str(st))
        admin.json("layer", "capture", f"ref-{version}", "--name", f"debian-{version}")

    # A bare machine from the installer: pending, its own identity, disk and a user file.
    token = admin.json("token", "create")["token"]
    bare = _machine(tmp_path / "bare", "bare-01", "3333-cccc", "eno1", "52:54:00:00:00:33")
    _os(bare, "12")
    (bare / "usr/bin/installer-only").write_text("left by the installer\n")
    (bare / "home/bob").mkdir()
    (bare / "home/bob/todo.txt").write_text("bob's list\n")
    state, agent = tmp_path / "bare-state", person("bare-agent")
    did = _enroll(agent, embedded.url, token, bare, state, FACTS[2])
    agent.run("agent", "run", "--once", "--state", str(state))

    # A driver pack for the HP desks: centralizing with a base layer lays it down too.
    pack = tmp_path / "hp-pack"
    (pack / "lib/firmware").mkdir(parents=True)
    (pack / "lib/firmware/hp-nic.fw").write_bytes(b"\x7fHP firmware")
    admin.json("driver", "import", "hp-fw", str(pack))
    admin.run("driver", "profile", "create", "hp", "--pack", "hp-fw", "--match", "sys_vendor=HP")
    dry = admin.json("cvd", "provision", did, "--base", "debian-12", "--policy", "std", "--dry-run")
    assert dry["layers"] == ["debian-12:1"] and "/etc/fstab" in dry["kept_from_new_machine"]
    assert dry["driver_packs"] == ["hp-fw:1"]
    res = admin.json(
        "cvd", "provision", did, "--base", "debian-12", "--policy", "std", "--name", "bob"
    )
    assert admin.json("cvd", "show", "bob")["device_id"] == did
    agent.run("agent", "run", "--once", "--state", str(state))
    agent.run("agent", "boot", "--state", str(state))
    agent.run("agent", "run", "--once", "--state", str(state))
    assert admin.json("task", "show", res["task"])["state"] == "done"
    assert dpkg_installed(bare) == {"base-tools": "1.0", "shared-lib": "1.0"}
    assert not (bare / "usr/bin/installer-only").exists()  # cleaned to the base layer
    assert (bare / "lib/firmware/hp-nic.fw").read_bytes() == b"\x7fHP firmware"
    assert (bare / "etc/hostname").read_text() == "bare-01\n"  # its identity stays
    assert (bare / "etc/fstab").read_text() == "UUID=3333-cccc / ext4 errors=remount-ro 0 1\n"
    assert (bare / "home/bob/todo.txt").read_text() == "bob's list\n"
    assert admin.json("cvd", "layers", "bob")["assigned"] == ["debian-12:1"]

    # The user installs a package of their own, then the machine moves to Debian 13.
    dpkg_install(bare, build_deb(debs, "bob-game", "0.1", {"/usr/games/bob-game": "#!/bin/sh\n"}))
    agent.run("agent", "run", "--once", "--sync", "--state", str(state))
    dry = admin.json("cvd", "migrate-os", "bob", "--base", "debian-13", "--dry-run")
    assert dry["os"] == "debian 13" and dry["packages_not_carried"] == {"bob-game": "0.1"}
    res = admin.json("cvd", "migrate-os", "bob", "--base", "debian-13")
    agent.run("agent", "run", "--once", "--state", str(state))
    agent.run("agent", "boot", "--state", str(state))
    agent.run("agent", "run", "--once", "--state", str(state))
    assert admin.json("task", "show", res["task"])["state"] == "done"
    assert 'VERSION_ID="13"' in (bare / "etc/os-release").read_text()
    assert dpkg_installed(bare) == {"base-tools": "2.0"}
    assert (bare / "usr/bin/base-tool").read_text() == "#!/bin/sh\necho 2.0\n"
    assert (bare / "etc/hostname").read_text() == "bare-01\n"
    assert (bare / "etc/machine-id").read_text() == f"{'bare-01':0>32}\n"
    assert (bare / "home/bob/todo.txt").read_text() == "bob's list\n"
    assert admin.json("cvd", "layers", "bob")["assigned"] == ["debian-13:1"]

    # The machine dies; its CVD moves onto a replacement in apps-data mode onto another
    # base layer: the system becomes debian-12, bob's applications and data come over,
    # the replacement keeps its identity and disks.
    (bare / "opt/bob-app").mkdir(parents=True)
    (bare / "opt/bob-app/run").write_text("bob's app\n")
    # Two packages of bob's own: a tool, and a newer build of the library Debian 12 has.
    tool = {"/usr/games/bob-tool": "#!/bin/sh\necho bob\n"}
    dpkg_install(bare, build_deb(debs, "bob-tool", "0.3", tool))
    lib15 = {"/usr/lib/shared-lib.so": "shared 1.5\n"}
    dpkg_install(bare, build_deb(debs, "shared-lib", "1.5", lib15))
    agent.run("agent", "run", "--once", "--sync", "--state", str(state))
    admin.run("cvd", "archive", "bob")
    token = admin.json("token", "create")["token"]
    new = _machine(tmp_path / "new4", "fresh-4", "4444-dddd", "eno1", "52:54:00:00:00:44")
    _os(new, "13")
    (new / "usr/bin/installer-only").write_text("left by the installer\n")
    state4, agent4 = tmp_path / "new4-state", person("new4-agent")
    did4 = _enroll(agent4, embedded.url, token, new, state4, FACTS[3])
    agent4.run("agent", "run", "--once", "--state", str(state4))
    args = ("cvd", "migrate", "bob", "--to", did4, "--mode", "apps-data", "--base", "debian-12")
    dry = admin.json(*args, "--dry-run")
    assert dry["blocking"] == [] and dry["layers"] == ["debian-12:1"]
    assert dry["driver_packs"] == ["hp-fw:1"]
    # Exactly the user's packages are carried: base-tools came with the CVD's base layer;
    # the library the new base has at another version is a conflict the base wins.
    assert dry["packages_carried"] == {"bob-tool": "0.3"}
    assert dry["packages_from_layers"] == {"base-tools": "2.0"}
    assert dry["package_conflicts"] == [
        {"package": "shared-lib", "cvd": "1.5", "new": "1.0", "wins": "new"}
    ]
    res = admin.json(*args)
    agent4.run("agent", "run", "--once", "--state", str(state4))
    agent4.run("agent", "boot", "--state", str(state4))
    agent4.run("agent", "run", "--once", "--state", str(state4))
    assert admin.json("task", "show", res["task"])["state"] == "done"
    assert 'VERSION_ID="12"' in (new / "etc/os-release").read_text()  # the chosen base
    assert dpkg_installed(new) == {"base-tools": "1.0", "bob-tool": "0.3", "shared-lib": "1.0"}
    assert (new / "usr/bin/base-tool").read_text() == "#!/bin/sh\necho 1.0\n"
    assert (new / "usr/games/bob-tool").read_text() == "#!/bin/sh\necho bob\n"
    assert (new / "var/lib/dpkg/info/bob-tool.list").exists()
    assert (new / "usr/lib/shared-lib.so").read_text() == "shared 1.0\n"  # the base's
    assert not (new / "usr/bin/installer-only").exists()
    assert (new / "opt/bob-app/run").read_text() == "bob's app\n"  # the applications
    assert (new / "lib/firmware/hp-nic.fw").exists()  # the pack its profile matches
    assert (new / "home/bob/todo.txt").read_text() == "bob's list\n"  # the user data
    assert (new / "etc/hostname").read_text() == "fresh-4\n"  # its own identity
    assert (new / "etc/fstab").read_text() == "UUID=4444-dddd / ext4 errors=remount-ro 0 1\n"
    assert admin.json("cvd", "layers", "bob")["assigned"] == ["debian-12:1"]
