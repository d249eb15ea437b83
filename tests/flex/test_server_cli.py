"""The admin's ``lamina flex`` and ``lamina group`` commands, run as a user would, against a
real server; and the VM-folder reader behind ``flex image register``."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamina.cli.flex_vm import read_vm
from lamina.config import ServerSettings
from lamina.errors import UnsafePathError, UsageError
from tests.flex.server_live import TIMEOUT, PatientLive
from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve

MiB = 1024 * 1024


def _lamina(env: dict[str, str], *args: str, ok: bool = True, stdin: str | None = None) -> Any:
    p = subprocess.run(
        [sys.executable, "-m", "lamina.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=300,
    )
    if ok:
        assert p.returncode == 0, f"lamina {' '.join(args)}: {p.stdout}\n{p.stderr}"
        return json.loads(p.stdout) if "--json" in args else p.stdout
    return p


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Live, dict[str, str]]]:
    settings = ServerSettings(
        data=tmp_path / "data", port=free_port(), admin_password=ADMIN_PASSWORD, workers=0
    )
    for url in serve(settings):
        live = PatientLive(url, settings.data)
        r = httpx.post(
            url + "/api/v1/auth/login",
            json={"user": "admin", "password": ADMIN_PASSWORD},
            timeout=TIMEOUT,
        )
        env = {
            **os.environ,
            "LAMINA_URL": url,
            "LAMINA_TOKEN": r.json()["token"],
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        }
        try:
            yield live, env
        finally:
            for c in live.clients:
                c.close()


def vmware_folder(folder: Path) -> Path:
    folder.mkdir()
    raw = folder.parent / "disk.raw"
    raw.write_bytes(random.Random(3).randbytes(2 * MiB))
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(folder / "disk.vmdk")],
        check=True,
    )
    (folder / "vm.vmx").write_text(
        '.encoding = "UTF-8"\nmemsize = "768"\nnumvcpus = "2"\nfirmware = "efi"\n'
        'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "disk.vmdk"\n'
    )
    return folder


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_admin_walkthrough(site: tuple[Live, dict[str, str]], tmp_path: Path) -> None:
    live, env = site
    img = _lamina(
        env, "flex", "image", "register", "win", str(vmware_folder(tmp_path / "vm")), "--json"
    )
    assert img["name"] == "win"
    [v] = img["versions"]
    assert (v["memory_mib"], v["cpus"], v["firmware"], v["size"]) == (768, 2, "uefi", 2 * MiB)
    _lamina(
        env,
        "user",
        "create",
        "bob",
        "--role",
        "flex-user",
        "--password-stdin",
        stdin="bob-password-1\n",
    )
    grp = _lamina(env, "group", "create", "sales", "--member", "bob", "--json")
    assert grp["members"] == ["bob"]
    pol = _lamina(
        env,
        *("flex", "policy", "create", "std", "--lease", "2d", "--usb", "hid,storage"),
        *("--clipboard", "on", "--valid-for", "30d", "--lockout", "5m", "--json"),
    )
    assert pol["restrictions"]["usb"] == ["hid", "storage"] and pol["restrictions"]["clipboard"]
    assert (pol["lease_seconds"], pol["valid_for"]) == (2 * 86400, 30 * 86400)
    assert pol["restrictions"]["lockout_seconds"] == 300
    assert pol["restrictions"]["max_password_tries"] == 3
    ent = _lamina(
        env,
        "flex",
        "entitle",
        "e1",
        "--image",
        "win",
        "--policy",
        "std",
        "--group",
        "sales",
        "--json",
    )
    assert ent["groups"] == ["sales"]
    bob = live.login("bob", "bob-password-1")
    r = bob.post("/flex/my/instances", json={"entitlement": "e1", "client": "bobs-laptop"})
    assert r.status_code == 201, r.text
    iid = r.json()["instance"]
    [row] = _lamina(env, "flex", "instance", "list", "--json")
    assert {
        k: row[k] for k in ("id", "user", "entitlement", "image", "policy", "state", "client")
    } == {
        "id": iid,
        "user": "bob",
        "entitlement": "e1",
        "image": "win",
        "policy": "std",
        "state": "active",
        "client": "bobs-laptop",
    }
    assert row["last_checkin"]
    locked = _lamina(env, "flex", "instance", "lock", iid, "--message", "see IT", "--json")
    assert (locked["state"], locked["message"]) == ("locked", "see IT")
    # Bad input: one line, the usage exit code, nothing made.
    bad = _lamina(env, "flex", "policy", "create", "x", "--usb", "toaster", ok=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert [p["name"] for p in _lamina(env, "flex", "policy", "list", "--json")] == ["std"]


def test_vm_folder_readers(tmp_path: Path) -> None:
    lv = tmp_path / "lv"
    lv.mkdir()
    (lv / "guest.qcow2").write_bytes(b"x")
    (lv / "domain.xml").write_text(
        "<domain type='kvm'><memory unit='GiB'>2</memory><vcpu>3</vcpu>"
        "<os firmware='efi'><type>hvm</type></os><devices>"
        "<disk type='file' device='cdrom'><source file='/iso/x.iso'/></disk>"
        "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/guest.qcow2'/></disk>"
        "</devices></domain>"
    )
    vm = read_vm(lv)
    assert (vm.disk.name, vm.memory_mib, vm.cpus, vm.firmware) == ("guest.qcow2", 2048, 3, "uefi")

    bomb = tmp_path / "bomb"
    bomb.mkdir()
    (bomb / "d.xml").write_text('<!DOCTYPE d [<!ENTITY a "aaaa">]><domain>&a;</domain>')
    with pytest.raises(UsageError, match="DTD"):
        read_vm(bomb)

    esc = tmp_path / "esc"
    esc.mkdir()
    (tmp_path / "outside.vmdk").write_bytes(b"x")
    (esc / "vm.vmx").write_text('scsi0:0.fileName = "../outside.vmdk"\n')
    with pytest.raises(UnsafePathError):
        read_vm(esc)
    with pytest.raises(UsageError):
        read_vm(tmp_path / "missing")
