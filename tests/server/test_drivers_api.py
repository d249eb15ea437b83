"""Device facts and the driver library through the API: facts refreshed by the agent's
report and validated as hostile input, pack uploads refused without a trace, profiles
matched against reported facts."""

from __future__ import annotations

import io
import tarfile

from lamina.protocol.schemas import MAX_MODALIASES
from tests.server.conftest import Live

REALTEK = "pci:v000010ECd00008168sv00001043sd00008677bc02sc00i00"


def tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def facts(host: str, **more: object) -> dict[str, object]:
    return {"machine_id": host, "hostname": host, **more}


def test_reported_facts_replace_the_devices_and_hostile_ones_are_refused(live: Live) -> None:
    dev = live.device("pc-1")
    admin = live.login()
    good = facts("pc-1", sys_vendor="LENOVO", modaliases=[REALTEK], boot_mode="uefi")
    r = dev.client.post("/agent/config", json={"state": "idle", "facts": good})
    assert r.status_code == 200, r.text
    shown = admin.get("/devices/pc-1").json()
    assert shown["facts"]["sys_vendor"] == "LENOVO" and shown["facts"]["modaliases"] == [REALTEK]
    assert "facts" not in shown["agent"]  # the report's state, without the facts
    for bad in (
        facts("pc-1", modaliases=[f"pci:v{i:08X}" for i in range(MAX_MODALIASES + 1)]),
        facts("pc-1", product_name="evil\x1b[31m"),
        facts("pc-1", modaliases=["has a space"]),
        facts("pc-1", network=[{"name": "../../etc", "mac": ""}]),
        facts("pc-1", disks=[{"name": "sda", "size": -1}]),
        facts("pc-1", boot_mode="floppy"),
        facts("pc-1", colour="red"),
    ):
        r = dev.client.post("/agent/config", json={"state": "idle", "facts": bad})
        assert r.status_code == 400, (bad, r.text)
    assert admin.get("/devices/pc-1").json()["facts"] == shown["facts"]


def test_pack_upload_is_checked_and_profiles_match_reported_facts(live: Live) -> None:
    admin = live.login()
    helpdesk = live.user("hd", "helpdesk")
    body = tar({"lib/firmware/rtl_nic/rtl8168h-2.fw": b"fw" * 100})
    hdr = {"Content-Type": "application/x-tar"}
    r = helpdesk.post("/drivers/import", params={"name": "rtl"}, content=body, headers=hdr)
    assert r.status_code == 403
    for bad in (
        tar({"etc/shadow": b"x"}),
        tar({"../lib/firmware/x": b"x"}),
        tar({"broken.deb": b"!<arch>\nnonsense"}),
        b"not a tar at all" * 100,
    ):
        r = admin.post("/drivers/import", params={"name": "rtl"}, content=bad, headers=hdr)
        assert r.status_code == 400, r.text
    assert admin.get("/drivers").json() == []  # nothing of a refused upload is kept
    r = admin.post(
        "/drivers/import", params={"name": "rtl", "notes": "v1"}, content=body, headers=hdr
    )
    assert r.status_code == 201, r.text
    assert [v["version"] for v in r.json()["versions"]] == [1]

    a, b = live.device("pc-a"), live.device("pc-b")
    deb = {"ID": "debian", "VERSION_ID": "12"}
    a.client.post(
        "/agent/config",
        json={
            "state": "idle",
            "facts": facts("pc-a", sys_vendor="LENOVO", modaliases=[REALTEK], os_release=deb),
        },
    )
    b.client.post(
        "/agent/config",
        json={"state": "idle", "facts": facts("pc-b", sys_vendor="LENOVO", os_release=deb)},
    )
    profile = {
        "name": "rtl",
        "packs": ["rtl:1"],
        "matches": ["sys_vendor=Lenovo", "modalias=pci:v000010ECd*"],
    }
    assert admin.post("/driver-profiles", json=profile).status_code == 201
    matched = admin.get("/driver-profiles/rtl/devices").json()
    assert [d["hostname"] for d in matched] == ["pc-a"]
    # Another OS family matches nothing; an update puts it back.
    assert admin.put("/driver-profiles/rtl", json={"os_family": "rhel"}).status_code == 200
    assert admin.get("/driver-profiles/rtl/devices").json() == []
    assert admin.put("/driver-profiles/rtl", json={"os_family": "debian"}).status_code == 200
    assert [d["hostname"] for d in admin.get("/driver-profiles/rtl/devices").json()] == ["pc-a"]
    for bad in (
        {**profile, "name": "p2", "matches": []},
        {**profile, "name": "p2", "matches": ["colour=red"]},
        {**profile, "name": "p2", "packs": ["nope"]},
        {**profile, "name": "p2", "packs": ["rtl:7"]},
    ):
        r = admin.post("/driver-profiles", json=bad)
        assert r.status_code in (400, 404), (bad, r.text)
    assert [p["name"] for p in admin.get("/driver-profiles").json()] == ["rtl"]
    # A layer name and a pack name share one name space; packs are not assignable layers.
    assert admin.delete("/drivers/rtl").status_code == 409  # the profile names it
    assert admin.delete("/driver-profiles/rtl").status_code == 200
    assert admin.delete("/drivers/rtl").status_code == 200
    actions = [e["action"] for e in live.audit()]
    assert {"driver.import", "driver.profile_create", "driver.delete"} <= set(actions)
