"""The driver library end to end through the CLI, with real agents on folder endpoints
carrying real dpkg databases: device facts from --facts and their refresh, a pack of a
firmware file, a modprobe snippet and a .deb, a profile matched by DMI and modalias, the
dry run listing the pack (and warning for other hardware), and the apply on the matching
endpoint only, through its merged-/usr links."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina.errors import ConflictError
from tests.e2e.conftest import Deployment, Lamina
from tests.e2e.debs import build_deb, dpkg_install, dpkg_installed, init_dpkg
from tests.e2e.endpoints import make_endpoint

pytestmark = pytest.mark.skipif(
    not shutil.which("dpkg-deb"), reason="dpkg-deb is not installed (apt package dpkg)"
)

REALTEK = "pci:v000010ECd00008168sv00001043sd00008677bc02sc00i00"
INTEL = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
FW = b"\x7fRTL8168H firmware" * 4096


def machine(tmp: Path, name: str, user: str, facts: dict[str, object]) -> tuple[Path, Path]:
    """A merged-/usr Debian folder endpoint with a dpkg database, and its facts file."""
    root = make_endpoint(tmp / name, name, user)
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    os.symlink("usr/lib", root / "lib")
    init_dpkg(root)
    facts_file = tmp / f"{name}-facts.json"
    facts_file.write_text(json.dumps(facts))
    return root, facts_file


def enroll(agent: Lamina, url: str, token: str, root: Path, state: Path, facts: Path) -> None:
    agent.run(
        "agent", "enroll", "--server", url, "--token", token, "--root", str(root),
        "--state", str(state), "--facts", str(facts),
    )  # fmt: skip
    agent.run("agent", "run", "--once", "--state", str(state))


@pytest.mark.e2e
def test_driver_pack_reaches_matching_hardware_only(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "std", "--keep-last", "20")
    ref_token = admin.json("token", "create", "--policy", "std", "--reference")["token"]
    token = admin.json("token", "create", "--policy", "std", "--uses", "5")["token"]
    debs = tmp_path / "debs"
    debs.mkdir()
    base_tools = build_deb(debs, "base-tools", "1.0", {"/usr/bin/base-tool": "#!/bin/sh\n"})

    # --- the reference (a Dell) and two desks: a Lenovo with a Realtek NIC, and an HP ------
    dell = {"sys_vendor": "Dell Inc.", "product_name": "OptiPlex 7090", "modaliases": [INTEL]}
    lenovo = {
        "sys_vendor": "LENOVO",
        "product_name": "20BWS03B00",
        "board_name": "20BWS03B00",
        "modaliases": [INTEL, REALTEK],
        "network": [{"name": "enp0s25", "mac": "50:7b:9d:aa:bb:cc"}],
    }
    hp = {"sys_vendor": "HP", "product_name": "EliteDesk 800 G6", "modaliases": [INTEL]}
    ref, ref_facts = machine(tmp_path, "ref-01", "admin", dell)
    a, a_facts = machine(tmp_path, "desk-a", "alice", lenovo)
    b, b_facts = machine(tmp_path, "desk-b", "bob", hp)
    for root in (ref, a, b):
        dpkg_install(root, base_tools)
    ref_state, a_state, b_state = (tmp_path / f"{n}-state" for n in ("ref", "a", "b"))
    ref_agent, a_agent, b_agent = (person(f"{n}-agent") for n in ("ref", "a", "b"))
    enroll(ref_agent, embedded.url, ref_token, ref, ref_state, ref_facts)
    enroll(a_agent, embedded.url, token, a, a_state, a_facts)
    enroll(b_agent, embedded.url, token, b, b_state, b_facts)

    # --- device facts: detected, with the --facts file merged over them --------------------
    shown = admin.json("device", "show", "desk-a")
    f = shown["facts"]
    assert (f["sys_vendor"], f["product_name"], f["model"]) == (
        "LENOVO",
        "20BWS03B00",
        "20BWS03B00",
    )
    assert f["modaliases"] == [INTEL, REALTEK] and f["network"][0]["mac"] == "50:7b:9d:aa:bb:cc"
    assert f["boot_mode"] in ("uefi", "bios") and f["os_release"]["VERSION_ID"] == "12"
    # Refreshed at every sync: the OS changes, the override stays merged over.
    (a / "etc/os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12.9"\nID=debian\n')
    a_agent.run("agent", "run", "--once", "--sync", "--state", str(a_state))
    f = admin.json("device", "show", "desk-a")["facts"]
    assert f["os_release"]["VERSION_ID"] == "12.9" and f["sys_vendor"] == "LENOVO"

    base = admin.json("layer", "capture", "ref-01", "--name", "debian-base")
    assert base["kind"] == "base"

    # --- the pack: a firmware file, a modprobe snippet and a .deb ---------------------------
    folder = tmp_path / "rtl-pack"
    (folder / "lib/firmware/rtl_nic").mkdir(parents=True)
    (folder / "lib/firmware/rtl_nic/rtl8168h-2.fw").write_bytes(FW)
    (folder / "etc/modprobe.d").mkdir(parents=True)
    (folder / "etc/modprobe.d/r8169.conf").write_text("options r8169 aspm=0\n")
    deb = build_deb(
        debs, "realtek-extra", "2.1", {"/lib/firmware/rtl_nic/rtl8125a-3.fw": b"\x01\x02" * 999}
    )
    shutil.copy(deb, folder / deb.name)
    doc = admin.json("driver", "import", "rtl-fw", str(folder), "--notes", "Realtek NICs")
    assert doc["versions"][0]["packages"] == {"realtek-extra": "2.1"}
    listed = admin.json("driver", "list")
    assert [(p["id"], p["name"], [v["version"] for v in p["versions"]]) for p in listed] == [
        (doc["id"], "rtl-fw", [1])
    ]
    assert "rtl-fw" not in [x["name"] for x in admin.json("layer", "list")]

    admin.run(
        "driver", "profile", "create", "lenovo-realtek", "--pack", "rtl-fw",
        "--match", "sys_vendor=lenovo", "--match", "modalias=pci:v000010ECd*",
        "--os-family", "debian",
    )  # fmt: skip
    a_id = admin.json("device", "show", "desk-a")["id"]
    assert admin.json("driver", "profile", "test", "lenovo-realtek") == [
        {"id": a_id, "hostname": "desk-a"}
    ]
    # A profile for other hardware matches no device.
    admin.run(
        "driver", "profile", "create", "t460", "--pack", "rtl-fw:1", "--match", "product_name=20F9*"
    )
    assert admin.json("driver", "profile", "test", "t460") == []

    # --- the dry run lists the pack where it matches, and warns for unmatched other hardware ---
    plans = admin.json("layer", "assign", "desk-a", "desk-b", "--base", "debian-base", "--dry-run")
    plan_a, plan_b = sorted(plans, key=lambda p: p["cvd"])
    assert plan_a["packs"] == ["rtl-fw:1"] and plan_a["warnings"] == []
    acts = {i["path"]: (i["action"], i["layer"]) for i in plan_a["items"]}
    # Merged /usr: the pack's /lib paths go where dpkg puts them.
    assert acts["/usr/lib/firmware/rtl_nic/rtl8168h-2.fw"] == ("added", "rtl-fw:1")
    assert acts["/usr/lib/firmware/rtl_nic/rtl8125a-3.fw"] == ("added", "rtl-fw:1")
    assert not any(p.startswith("/lib/") for p in acts)
    # No profile for the HP, but its system last ran on this very HP (not on the Dell the
    # base layer was captured on): nothing to warn about.
    assert plan_b["packs"] == [] and plan_b["warnings"] == []
    assert not any("firmware" in i["path"] for i in plan_b["items"])

    # --- assign and apply: the pack lands on the Lenovo only --------------------------------
    admin.json("layer", "assign", "desk-a", "desk-b", "--base", "debian-base")
    for agent, state in ((a_agent, a_state), (b_agent, b_state)):
        agent.run("agent", "run", "--once", "--state", str(state))
        agent.run("agent", "boot", "--state", str(state))
    assert (a / "usr/lib/firmware/rtl_nic/rtl8168h-2.fw").read_bytes() == FW
    assert (a / "lib").is_symlink()  # the link was followed as dpkg does, not replaced
    assert (a / "etc/modprobe.d/r8169.conf").read_text() == "options r8169 aspm=0\n"
    assert dpkg_installed(a) == {"base-tools": "1.0", "realtek-extra": "2.1"}
    assert not (b / "usr/lib/firmware").exists() and not (b / "etc/modprobe.d").exists()
    assert dpkg_installed(b) == {"base-tools": "1.0"}
    a_agent.run("agent", "run", "--once", "--sync", "--state", str(a_state))
    assert admin.json("cvd", "layers", "desk-a")["running"] == ["debian-base:1", "rtl-fw:1"]

    # --- a pack a profile names, or an endpoint runs, is not deleted -------------------------
    r = admin.run("driver", "delete", "rtl-fw", ok=False)
    assert r.returncode == ConflictError.exit_code and "profile" in r.stderr
    admin.run("driver", "profile", "delete", "lenovo-realtek")
    admin.run("driver", "profile", "delete", "t460")
    r = admin.run("driver", "delete", "rtl-fw", ok=False)
    assert r.returncode == ConflictError.exit_code and "runs on" in r.stderr
