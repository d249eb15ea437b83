"""A managed flex guest gets its entitlement's layers once it has a first snapshot."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import httpx
import pytest

from lamina.protocol.flex import Lease, verify
from tests.flex.server_live import TIMEOUT
from tests.server.conftest import API, Device, Live


def enroll(live: Live, token: str, hostname: str) -> Device:
    facts = {"machine_id": "same-machine-id", "hostname": hostname}
    r = httpx.post(
        live.url + API + "/agent/enroll", json={"token": token, "facts": facts}, timeout=TIMEOUT
    )
    assert r.status_code == 201, r.text
    doc = r.json()
    client = live.client(doc["credential"])
    cvd_id = client.post("/agent/config", json={"state": "idle"}).json()["cvd_id"]
    return Device(client, bytes.fromhex(doc["chunking"]["id_key"]), cvd_id)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_managed_guest_gets_the_entitlements_base_layer(live: Live, tmp_path: Path) -> None:
    admin = live.login()
    assert admin.post("/policies", json={"name": "std"}).status_code == 201
    # a base layer, captured from a reference machine
    tok = admin.post("/tokens", json={"expires_in": 3600, "policy": "std", "reference": True})
    ref = enroll(live, tok.json()["token"], "ref")
    ref.commit_files({b"base-tool": [b"from the base layer"]})
    r = admin.post("/layers/capture", json={"cvd": ref.cvd_id, "name": "base1"})
    assert r.status_code == 201, r.text
    # an image entitled to bob, managed, with that base layer
    disk = tmp_path / "d.raw"
    disk.write_bytes(random.Random(1).randbytes(128 * 1024))
    with open(disk, "rb") as f:
        assert (
            admin.post("/flex/images/upload", params={"name": "img"}, content=f).status_code == 201
        )
    assert admin.post("/flex/policies", json={"name": "fp"}).status_code == 201
    body = {"name": "e", "image": "img", "policy": "fp", "users": ["bob"], "manage": True}
    bob = live.user("bob", "flex-user")
    r = admin.post("/flex/entitlements", json={**body, "cvd_policy": "std", "base": "nope"})
    assert r.status_code == 404  # an unknown layer is refused up front
    r = admin.post("/flex/entitlements", json={**body, "cvd_policy": "std", "base": "base1"})
    assert r.status_code == 201, r.text
    r = bob.post("/flex/my/instances", json={"entitlement": "e", "client": "laptop"})
    assert r.status_code == 201, r.text
    pub = bob.get("/flex/key").json()["public_key"]
    lease = verify(r.json()["lease"], pub, Lease)
    assert lease.manage is not None
    guest = enroll(live, lease.manage.token, "guest")
    assert admin.get(f"/cvds/{guest.cvd_id}/layers").json()["assigned"] == []
    guest.commit_files({b"hello": [b"the guest's own file"]})
    state = admin.get(f"/cvds/{guest.cvd_id}/layers").json()
    assert state["assigned"] == ["base1:1"]
    assert any(
        a["action"] == "layer.assign" and a["actor"].startswith("flex instance")
        for a in live.audit()
    )
