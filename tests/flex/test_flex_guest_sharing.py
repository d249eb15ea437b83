"""Managed flex guests take no part in cross-endpoint sharing: any flex user mints an
active device per instance, so a share threshold counted over their CVDs would be one
person's to pass alone, and with it the content oracle (``server/services/inflight.py``).
Against a real server; ordinary devices still share (``tests/server/test_inflight.py``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx

from lamina.store.blob import BlobKind, blob_id
from tests.flex.server_live import PatientLive
from tests.server.conftest import API, Device


def _guests(live: PatientLive, tmp_path: Path, n: int) -> list[Device]:
    """``n`` managed guests of one flex user (mallory), each an active device."""
    admin = live.login()
    disk = tmp_path / "d.raw"
    disk.write_bytes(random.Random(1).randbytes(64 * 1024))
    with open(disk, "rb") as f:
        r = admin.post("/flex/images/upload", params={"name": "img"}, content=f)
    assert r.status_code == 201, r.text
    assert admin.post("/flex/policies", json={"name": "fp"}).status_code == 201
    assert admin.post("/policies", json={"name": "cvdp"}).status_code == 201
    mallory = live.user("mallory", "flex-user")
    body = {"name": "e", "image": "img", "policy": "fp", "users": ["mallory"]}
    r = admin.post("/flex/entitlements", json={**body, "manage": True, "cvd_policy": "cvdp"})
    assert r.status_code == 201, r.text
    out = []
    for k in range(n):
        r = mallory.post("/flex/my/instances", json={"entitlement": "e", "client": f"l{k}"})
        assert r.status_code == 201, r.text
        token = json.loads(r.json()["lease"]["body"])["manage"]["token"]
        r = httpx.post(
            live.url + API + "/agent/enroll",
            json={"token": token, "facts": {"machine_id": "m", "hostname": f"g{k}"}},
            timeout=60,
        )
        assert r.status_code == 201 and r.json()["status"] == "active", r.text
        c = live.client(r.json()["credential"])
        cvd = c.post("/agent/config", json={"state": "idle"}).json()["cvd_id"]
        out.append(Device(c, bytes.fromhex(r.json()["chunking"]["id_key"]), cvd))
    return out


def test_a_flex_users_guests_cannot_confirm_another_endpoints_content(
    live: PatientLive, tmp_path: Path
) -> None:
    victim = live.device("victim")
    secret, wrong = b"PIN=4711\n", b"PIN=0000\n"
    victim.upload([(BlobKind.DATA, secret)])
    d1, d2, d3 = _guests(live, tmp_path, 3)

    def told_present(content: bytes, asker: Device, helpers: list[Device]) -> bool:
        bid = blob_id(asker.id_key, content)
        for h in helpers:
            h.missing([bid])  # a claim: "I am uploading it"
        return asker.missing([bid]) == []

    # Claims of the user's other guests count for nothing: right and wrong guesses alike.
    assert told_present(secret, d1, [d2, d3]) is False
    assert told_present(wrong, d1, [d2, d3]) is False
    # Nor does their ownership: two guests upload the guess, a third asks, and commits.
    for guess in (secret, wrong):
        bid = blob_id(d1.id_key, guess)
        d2.upload([(BlobKind.DATA, guess)])
        d3.upload([(BlobKind.DATA, guess)])
        assert d1.missing([bid]) == [bid.hex()]
    # An ordinary device asking the same is told what it was told before: the victim and
    # the two guests own the secret, but the guests count for no one.
    other = live.device("other")
    assert other.missing([blob_id(other.id_key, secret)]) == [blob_id(other.id_key, secret).hex()]


def test_ordinary_devices_still_share_common_content(live: PatientLive) -> None:
    """The control: with the default threshold (2), content two other CVDs hold is
    present for a third, which then does not send it."""
    common = b"a file every endpoint of the fleet has" * 10
    a, b, c = live.device("a"), live.device("b"), live.device("c")
    a.upload([(BlobKind.DATA, common)])
    b.upload([(BlobKind.DATA, common)])
    assert c.missing([blob_id(c.id_key, common)]) == []
