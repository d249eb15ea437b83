"""When a user's right to a flex image ends, what they hold of it stops working, on the
server: the laptop's own checks are not the only ones (its owner is root on it).

An entitlement withdrawn (a group emptied or deleted, the entitlement's users changed), a
policy expired, an instance revoked or locked, a user deleted: each is checked against
a real server (``live``), as the laptop and a managed guest would meet it.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import httpx
import pytest

from tests.flex.server_live import PatientLive
from tests.server.conftest import API


def _setup(live: PatientLive, tmp_path: Path, **policy: object) -> tuple[PatientLive, httpx.Client]:
    """An image "img" (256 KiB) and a flex policy "fp"."""
    admin = live.login()
    disk = tmp_path / "d.raw"
    disk.write_bytes(random.Random(1).randbytes(256 * 1024))
    with open(disk, "rb") as f:
        r = admin.post("/flex/images/upload", params={"name": "img"}, content=f)
    assert r.status_code == 201, r.text
    r = admin.post("/flex/policies", json={"name": "fp", **policy})
    assert r.status_code == 201, r.text
    return live, admin


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _lease(r: httpx.Response) -> dict[str, object]:
    assert r.status_code == 200, r.text
    doc: dict[str, object] = json.loads(r.json()["body"])
    return doc


def _managed(live: PatientLive, admin: httpx.Client) -> tuple[httpx.Client, str, str]:
    """Bob's managed entitlement "e" and an instance of it: (bob, instance id, the
    enrollment token its lease carries)."""
    assert admin.post("/policies", json={"name": "cvdp"}).status_code == 201
    bob = live.user("bob", "flex-user")
    r = admin.post(
        "/flex/entitlements",
        json={
            "name": "e",
            "image": "img",
            "policy": "fp",
            "users": ["bob"],
            "manage": True,
            "cvd_policy": "cvdp",
        },
    )
    assert r.status_code == 201, r.text
    r = bob.post("/flex/my/instances", json={"entitlement": "e", "client": "laptop"})
    assert r.status_code == 201, r.text
    token = json.loads(r.json()["lease"]["body"])["manage"]["token"]
    return bob, r.json()["instance"], token


def _enroll(live: PatientLive, token: str) -> httpx.Response:
    return httpx.post(
        live.url + API + "/agent/enroll",
        json={"token": token, "facts": {"machine_id": "g", "hostname": "guest"}},
        timeout=60,
    )


def _guest(live: PatientLive, token: str) -> httpx.Client:
    """The managed guest enrolled with ``token``: an active device."""
    r = _enroll(live, token)
    assert r.status_code == 201 and r.json()["status"] == "active", r.text
    guest = live.client(r.json()["credential"])
    assert guest.post("/agent/config", json={"state": "idle"}).json()["status"] == "active"
    return guest


def _refused(guest: httpx.Client) -> None:
    """The guest's device credential works nowhere any more."""
    assert guest.post("/agent/config", json={"state": "idle"}).status_code == 401
    assert guest.get("/agent/work").status_code == 401
    assert guest.post("/blobs/read", json={"ids": ["00" * 32]}).status_code == 401


@pytest.mark.parametrize("how", ["group emptied", "group deleted", "entitlement's users changed"])
def test_a_withdrawn_entitlement_ends_the_users_instances(
    live: PatientLive, tmp_path: Path, how: str
) -> None:
    live, admin = _setup(live, tmp_path)
    bob = live.user("bob", "flex-user")
    live.user("carol", "flex-user")
    assert admin.post("/groups", json={"name": "staff", "members": ["bob"]}).status_code == 201
    r = admin.post(
        "/flex/entitlements",
        json={"name": "e", "image": "img", "policy": "fp", "groups": ["staff"]},
    )
    assert r.status_code == 201, r.text
    r = bob.post("/flex/my/instances", json={"entitlement": "e", "client": "laptop"})
    assert r.status_code == 201, r.text
    iid = r.json()["instance"]
    assert bob.get(f"/flex/my/instances/{iid}/pieces/0").status_code == 200

    if how == "group emptied":
        r = admin.post("/groups/staff/members/remove", json={"members": ["bob"]})
        assert r.status_code == 200, r.text
    elif how == "group deleted":
        assert admin.delete("/groups/staff").status_code == 204
    else:
        r = admin.put("/flex/entitlements/e", json={"users": ["carol"], "groups": []})
        assert r.status_code == 200, r.text

    assert bob.get("/flex/my/entitlements").json() == []
    # ended at once, before the laptop checks in
    assert admin.get(f"/flex/instances/{iid}").json()["state"] == "revoked"
    for path in (f"/flex/my/instances/{iid}/pieces/0", f"/flex/my/instances/{iid}/manifest"):
        r = bob.get(path)
        assert r.status_code == 403, (path, r.text)
    lease = _lease(bob.post(f"/flex/my/instances/{iid}/checkin", json={"client_time": _now()}))
    assert lease["state"] == "revoked" and "no longer entitled" in str(lease["message"])
    assert admin.get(f"/flex/instances/{iid}").json()["state"] == "revoked"
    # Entitled again later: the revoked instance stays revoked; a new one is made.
    r = admin.put("/flex/entitlements/e", json={"users": ["bob"], "groups": []})
    assert r.status_code == 200, r.text
    assert bob.get(f"/flex/my/instances/{iid}/pieces/0").status_code == 403
    r = bob.post("/flex/my/instances", json={"entitlement": "e", "client": "laptop"})
    assert r.status_code == 201, r.text
    assert bob.get(f"/flex/my/instances/{r.json()['instance']}/pieces/0").status_code == 200


def test_an_expired_policy_creates_no_instance_and_serves_no_piece(
    live: PatientLive, tmp_path: Path
) -> None:
    live, admin = _setup(live, tmp_path)
    bob = live.user("bob", "flex-user")
    r = admin.post(
        "/flex/entitlements", json={"name": "e", "image": "img", "policy": "fp", "users": ["bob"]}
    )
    assert r.status_code == 201, r.text
    r = bob.post("/flex/my/instances", json={"entitlement": "e", "client": "laptop"})
    assert r.status_code == 201, r.text
    iid = r.json()["instance"]
    assert bob.get(f"/flex/my/instances/{iid}/pieces/0").status_code == 200

    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).isoformat()
    assert admin.put("/flex/policies/fp", json={"expires_at": past}).status_code == 200
    r = bob.get(f"/flex/my/instances/{iid}/pieces/0")
    assert r.status_code == 403 and "expired" in r.text
    r = bob.post("/flex/my/instances", json={"entitlement": "e", "client": "laptop"})
    assert r.status_code == 403 and "expired" in r.text
    # the laptop still learns it at check-in (its lease says until when it was valid)
    lease = _lease(bob.post(f"/flex/my/instances/{iid}/checkin", json={"client_time": _now()}))
    assert str(lease["expires_at"]) < _now()


def test_a_revoked_managed_instance_revokes_its_guest(live: PatientLive, tmp_path: Path) -> None:
    live, admin = _setup(live, tmp_path)
    _bob, iid, token = _managed(live, admin)
    guest = _guest(live, token)
    r = admin.post(f"/flex/instances/{iid}/revoke", json={"message": "gone"})
    assert r.status_code == 200 and r.json()["state"] == "revoked", r.text
    _refused(guest)


def test_deleting_a_flex_user_revokes_their_guests(live: PatientLive, tmp_path: Path) -> None:
    live, admin = _setup(live, tmp_path)
    _bob, _iid, token = _managed(live, admin)
    guest = _guest(live, token)
    assert admin.delete("/users/bob").status_code == 204
    _refused(guest)
    devices = admin.get("/devices").json()
    assert [d["status"] for d in devices if d["hostname"] == "guest"] == ["revoked"]


def test_a_lock_revokes_the_enrollment_token_of_a_guest_not_enrolled_yet(
    live: PatientLive, tmp_path: Path
) -> None:
    live, admin = _setup(live, tmp_path)
    bob, iid, token = _managed(live, admin)
    r = admin.post(f"/flex/instances/{iid}/lock", json={"message": "stop"})
    assert r.status_code == 200 and r.json()["state"] == "locked", r.text
    r = _enroll(live, token)
    assert r.status_code == 401, r.text
    # Unlocked, its next lease carries a new token, which enrolls.
    assert admin.post(f"/flex/instances/{iid}/unlock", json={}).status_code == 200
    lease = _lease(bob.post(f"/flex/my/instances/{iid}/checkin", json={"client_time": _now()}))
    manage = lease["manage"]
    assert isinstance(manage, dict) and manage["token"] != token
    _guest(live, manage["token"])


@pytest.mark.parametrize("how", ["policy expired", "user disabled"])
def test_a_guest_enrolls_only_while_its_instance_may_serve(
    live: PatientLive, tmp_path: Path, how: str
) -> None:
    """The enrollment token a managed instance's lease carries is refused once the
    instance may serve no more (its policy expired, its user disabled), and no new lease
    carries one."""
    live, admin = _setup(live, tmp_path)
    bob, iid, token = _managed(live, admin)
    if how == "policy expired":
        past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
        assert admin.put("/flex/policies/fp", json={"expires_at": past}).status_code == 200
        lease = _lease(bob.post(f"/flex/my/instances/{iid}/checkin", json={"client_time": _now()}))
        assert lease["manage"] is None
    else:
        assert admin.post("/users/bob/disable").status_code == 200
    r = _enroll(live, token)
    assert r.status_code == 401 and "cannot be used" in r.text, r.text
