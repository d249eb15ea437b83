"""The flex server through its API, against a real server and real ``qemu-img``.

One server for the module (registering an image is the expensive part); each test
makes the users, policies and entitlements it needs under its own names.
"""

from __future__ import annotations

import hashlib
import http.server
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest

from lamina.config import ServerSettings
from lamina.errors import IntegrityError
from lamina.protocol.flex import FlexManifest, Lease, Signed, verify
from lamina.store.keys import DEFAULT_MAX
from tests.flex.server_live import TIMEOUT, PatientLive
from tests.server.conftest import ADMIN_PASSWORD, Live, fixed_keys, free_port, serve

MiB = 1024 * 1024
SIZE = 32 * MiB
#: The image holds data in its first DATA bytes; the rest is never written (a hole).
DATA = 24 * MiB

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed"),
]


class Srv:
    def __init__(self, live: Live) -> None:
        self.live = live
        self.admin = live.login()
        self.users: dict[str, httpx.Client] = {}

    def user(self, name: str, role: str = "flex-user") -> httpx.Client:
        """A user (made on first use) logged in once for the module: Argon2 is slow."""
        if name not in self.users:
            password = f"{name}-password-1"
            r = self.admin.post("/users", json={"name": name, "password": password, "role": role})
            assert r.status_code == 201, r.text
            self.users[name] = self.live.login(name, password)
        return self.users[name]


def make_raw(path: Path, seed: int, change: tuple[int, int] | None = None) -> bytes:
    """A raw disk of SIZE bytes: DATA random bytes, then a hole. ``change``: (offset, length)
    re-randomized with another seed. Returns the disk's bytes."""
    data = bytearray(random.Random(seed).randbytes(DATA))
    if change:
        off, n = change
        data[off : off + n] = random.Random(seed + 1000).randbytes(n)
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(SIZE)
    return bytes(data) + bytes(SIZE - DATA)


def to_qcow2(raw: Path, out: Path) -> Path:
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True
    )
    return out


def upload(admin: httpx.Client, name: str, disk: Path, **params: Any) -> httpx.Response:
    with open(disk, "rb") as f:
        return admin.post("/flex/images/upload", params={"name": name, **params}, content=f)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    tmp = tmp_path_factory.mktemp("flexsrv")
    # fixed keys: where the chunks around v2's change begin and end is the store's
    # chunking secret's, and test_register_qcow2_two_versions bounds them
    settings = ServerSettings(
        data=fixed_keys(tmp / "data"), port=free_port(), admin_password=ADMIN_PASSWORD, workers=0
    )
    for url in serve(settings):
        live = PatientLive(url, settings.data)
        try:
            yield Srv(live)
        finally:
            for c in live.clients:
                c.close()


@pytest.fixture(scope="module")
def image(srv: Srv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Image ``win`` with two versions registered from qcow2 disks; v2 changes 1 MiB of v1."""
    tmp = tmp_path_factory.mktemp("disks")
    v1 = make_raw(tmp / "v1.raw", 1)
    r1 = upload(
        srv.admin, "win", to_qcow2(tmp / "v1.raw", tmp / "v1.qcow2"), memory_mib=512, cpus=2
    )
    assert r1.status_code == 201, r1.text
    change = (8 * MiB, 1 * MiB)
    v2 = make_raw(tmp / "v2.raw", 1, change)
    r2 = upload(srv.admin, "win", to_qcow2(tmp / "v2.raw", tmp / "v2.qcow2"), firmware="uefi")
    assert r2.status_code == 201, r2.text
    assert srv.admin.post("/flex/policies", json={"name": "std"}).status_code == 201
    return {"v1": v1, "v2": v2, "r1": r1.json(), "r2": r2.json(), "changed": change[1]}


def entitle(srv: Srv, name: str, **body: Any) -> dict[str, Any]:
    for u in body.get("users", []):
        srv.user(u)
    r = srv.admin.post(
        "/flex/entitlements", json={"name": name, "image": "win", "policy": "std", **body}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def key(client: httpx.Client) -> str:
    r = client.get("/flex/key")
    assert r.status_code == 200, r.text
    return str(r.json()["public_key"])


def new_instance(client: httpx.Client, entitlement: str) -> tuple[str, FlexManifest, Lease]:
    r = client.post("/flex/my/instances", json={"entitlement": entitlement, "client": "laptop-1"})
    assert r.status_code == 201, r.text
    doc = r.json()
    pub = key(client)
    return (
        doc["instance"],
        verify(doc["manifest"], pub, FlexManifest),
        verify(doc["lease"], pub, Lease),
    )


def checkin(client: httpx.Client, iid: str) -> Lease:
    r = client.post(
        f"/flex/my/instances/{iid}/checkin", json={"client_time": "2026-11-30T06:00:00Z"}
    )
    assert r.status_code == 200, r.text
    return verify(r.json(), key(client), Lease)


# --- images -------------------------------------------------------------------------------
def test_register_qcow2_two_versions(image: dict[str, Any]) -> None:
    versions = image["r2"]["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["memory_mib"] == 512 and versions[0]["cpus"] == 2
    assert versions[1]["firmware"] == "uefi" and versions[1]["size"] == SIZE
    # The second version stores about what changed, not the image again.
    assert image["changed"] <= versions[1]["new_bytes"] <= image["changed"] + 2 * DEFAULT_MAX
    assert versions[0]["new_bytes"] >= DATA


def test_pieces_rebuild_the_disk_and_match_the_signed_manifest(
    srv: Srv, image: dict[str, Any]
) -> None:
    entitle(srv, "e-pieces", users=["bob"])
    bob = srv.user("bob")
    iid, manifest, lease = new_instance(bob, "e-pieces")
    assert (manifest.version, manifest.size, manifest.firmware) == (2, SIZE, "uefi")
    assert lease.instance_id == iid and lease.state == "active" and lease.user == "bob"
    got = bytearray()
    for n, p in enumerate(manifest.pieces):
        r = bob.get(f"/flex/my/instances/{iid}/pieces/{n}")
        assert r.status_code == 200
        assert blake3.blake3(r.content).hexdigest() == p.blake3 and len(r.content) == p.length
        got += r.content
    assert bytes(got) == image["v2"]
    assert bob.get(f"/flex/my/instances/{iid}/pieces/{len(manifest.pieces)}").status_code == 404
    # The manifest route gives the same signed document.
    again = bob.get(f"/flex/my/instances/{iid}/manifest").json()
    assert verify(again, key(bob), FlexManifest) == manifest


def test_a_tampered_manifest_does_not_verify(srv: Srv, image: dict[str, Any]) -> None:
    entitle(srv, "e-tamper", users=["bob"])
    bob = srv.user("bob")
    iid, _, _ = new_instance(bob, "e-tamper")
    signed = Signed[FlexManifest].model_validate(
        bob.get(f"/flex/my/instances/{iid}/manifest").json()
    )
    bad = signed.model_copy(update={"body": signed.body.replace('"uefi"', '"bios"')})
    with pytest.raises(IntegrityError):
        verify(bad, key(bob), FlexManifest)


def test_signing_key_is_private_and_stable(srv: Srv, image: dict[str, Any]) -> None:
    first = key(srv.admin)
    path = srv.live.data / "flex-signing-key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert key(srv.admin) == first


def test_a_disk_naming_a_backing_file_is_refused(srv: Srv, tmp_path: Path) -> None:
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"server secret" * 1000)
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(evil)],
        check=True,
        capture_output=True,
    )
    r = upload(srv.admin, "evil", evil)
    assert r.status_code == 400 and "backing file" in r.json()["message"]
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"")
    r = upload(srv.admin, "evil", garbage)
    assert r.status_code == 400
    assert "evil" not in [i["name"] for i in srv.admin.get("/flex/images").json()] or all(
        not i["versions"] for i in srv.admin.get("/flex/images").json() if i["name"] == "evil"
    )


def test_register_by_url_checks_the_digest(srv: Srv, tmp_path: Path) -> None:
    raw = tmp_path / "site" / "small.raw"
    raw.parent.mkdir()
    raw.write_bytes(random.Random(7).randbytes(MiB))
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(raw.parent), **kw)

        def log_message(self, *a: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/small.raw"
        r = srv.admin.post("/flex/images/byurl/url", json={"url": url, "sha256": "0" * 64})
        assert r.status_code == 422 and "SHA-256" in r.json()["message"]
        r = srv.admin.post("/flex/images/byurl/url", json={"url": url, "sha256": digest})
        assert r.status_code == 201, r.text
        assert r.json()["versions"][0]["size"] == MiB
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- policies, lock, revoke, overrides -----------------------------------------------------------
def test_policy_edit_reaches_the_instance_at_check_in(srv: Srv, image: dict[str, Any]) -> None:
    r = srv.admin.post(
        "/flex/policies",
        json={
            "name": "p-edit",
            "restrictions": {"usb": ["hid"], "clipboard": True},
            "lease_seconds": 3600,
        },
    )
    assert r.status_code == 201, r.text
    entitle(srv, "e-edit", users=["bob"], policy="p-edit")
    bob = srv.user("bob")
    iid, _, lease = new_instance(bob, "e-edit")
    assert lease.policy.restrictions.clipboard is True and lease.policy.restrictions.usb == ["hid"]
    assert (lease.lease_until - lease.issued_at).total_seconds() == 3600
    r = srv.admin.put(
        "/flex/policies/p-edit",
        json={"restrictions": {"clipboard": False, "network": "none"}, "lease_seconds": 600},
    )
    assert r.status_code == 200, r.text
    lease = checkin(bob, iid)
    assert lease.policy.restrictions.clipboard is False
    assert lease.policy.restrictions.network == "none"
    assert lease.policy.restrictions.usb == ["hid"]  # unchanged fields stay
    assert (lease.lease_until - lease.issued_at).total_seconds() == 600
    # An expiry caps the lease.
    r = srv.admin.put("/flex/policies/p-edit", json={"expires_at": "2020-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    lease = checkin(bob, iid)
    assert lease.expires_at is not None and lease.lease_until == lease.expires_at


def test_bad_restrictions_are_refused(srv: Srv, image: dict[str, Any]) -> None:
    r = srv.admin.post(
        "/flex/policies", json={"name": "p-bad", "restrictions": {"usb": ["toaster"]}}
    )
    assert r.status_code == 400
    r = srv.admin.post("/flex/policies", json={"name": "p-bad", "restrictions": {"nope": 1}})
    assert r.status_code == 400 and "nope" in r.json()["message"]


def test_lock_unlock_revoke(srv: Srv, image: dict[str, Any]) -> None:
    entitle(srv, "e-lock", users=["bob"])
    bob = srv.user("bob")
    hd = srv.user("hd", "helpdesk")
    iid, _, _ = new_instance(bob, "e-lock")
    r = hd.post(f"/flex/instances/{iid}/lock", json={"message": "call IT"})
    assert r.status_code == 200 and r.json()["state"] == "locked"
    lease = checkin(bob, iid)
    assert (lease.state, lease.message) == ("locked", "call IT")
    assert bob.get(f"/flex/my/instances/{iid}/pieces/0").status_code == 403
    assert hd.post(f"/flex/instances/{iid}/unlock", json={}).json()["state"] == "active"
    assert checkin(bob, iid).state == "active"
    assert bob.get(f"/flex/my/instances/{iid}/pieces/0").status_code == 200
    assert hd.post(f"/flex/instances/{iid}/revoke", json={"message": "left"}).status_code == 200
    lease = checkin(bob, iid)
    assert lease.state == "revoked"
    assert bob.get(f"/flex/my/instances/{iid}/pieces/0").status_code == 403
    assert hd.post(f"/flex/instances/{iid}/unlock", json={}).status_code == 409
    rows = {r["id"]: r for r in srv.admin.get("/flex/instances").json()}
    row = rows[iid]
    assert set(row) >= {
        "id",
        "user",
        "entitlement",
        "image",
        "policy",
        "state",
        "last_checkin",
        "client",
    }
    assert (row["user"], row["state"], row["client"]) == ("bob", "revoked", "laptop-1")
    actions = {(a["action"], a["target"]) for a in srv.live.audit()}
    for a in (
        "flex.instance.create",
        "flex.instance.lock",
        "flex.instance.unlock",
        "flex.instance.revoke",
    ):
        assert (a, iid) in actions


def test_per_instance_policy_overrides_the_entitlements(srv: Srv, image: dict[str, Any]) -> None:
    assert (
        srv.admin.post(
            "/flex/policies", json={"name": "p-strict", "restrictions": {"network": "none"}}
        ).status_code
        == 201
    )
    entitle(srv, "e-over", users=["bob"])
    bob = srv.user("bob")
    iid, _, _ = new_instance(bob, "e-over")
    other, _, _ = new_instance(bob, "e-over")
    r = srv.admin.put(f"/flex/instances/{iid}/policy", json={"policy": "p-strict"})
    assert r.status_code == 200 and r.json()["policy"] == "p-strict"
    assert checkin(bob, iid).policy.name == "p-strict"
    assert checkin(bob, other).policy.name == "std"
    srv.admin.put(f"/flex/instances/{iid}/policy", json={"policy": None})
    assert checkin(bob, iid).policy.name == "std"


def test_groups_entitle_their_members(srv: Srv, image: dict[str, Any]) -> None:
    dave, erin = srv.user("grp-dave"), srv.user("grp-erin")
    r = srv.admin.post("/groups", json={"name": "sales", "members": ["grp-dave"]})
    assert r.status_code == 201, r.text
    entitle(srv, "e-group", groups=["sales"])
    assert [e["name"] for e in dave.get("/flex/my/entitlements").json()] == ["e-group"]
    assert erin.get("/flex/my/entitlements").json() == []
    assert (
        erin.post("/flex/my/instances", json={"entitlement": "e-group", "client": "x"}).status_code
        == 404
    )
    assert (
        srv.admin.post("/groups/sales/members", json={"members": ["grp-erin"]}).status_code == 200
    )
    assert [e["name"] for e in erin.get("/flex/my/entitlements").json()] == ["e-group"]
    new_instance(erin, "e-group")
    assert (
        srv.admin.post("/groups/sales/members/remove", json={"members": ["grp-dave"]}).status_code
        == 200
    )
    assert dave.get("/flex/my/entitlements").json() == []
    assert srv.admin.get("/groups/sales").json()["members"] == ["grp-erin"]


def test_a_pinned_version_is_what_the_instance_gets(srv: Srv, image: dict[str, Any]) -> None:
    entitle(srv, "e-pin", users=["bob"], image="win:1")
    bob = srv.user("bob")
    mine = {e["name"]: e for e in bob.get("/flex/my/entitlements").json()}
    assert mine["e-pin"]["version"] == 1
    _, manifest, _ = new_instance(bob, "e-pin")
    assert (manifest.version, manifest.firmware, manifest.memory_mib) == (1, "bios", 512)


# --- managed guests ---------------------------------------------------------------------------
def test_managed_instances_enroll_as_distinct_devices(srv: Srv, image: dict[str, Any]) -> None:
    if srv.admin.get("/policies/flexcvd").status_code == 404:
        assert srv.admin.post("/policies", json={"name": "flexcvd"}).status_code == 201
    entitle(srv, "e-manage", users=["bob"], manage=True, cvd_policy="flexcvd")
    bob = srv.user("bob")
    devices = []
    for _ in range(2):
        iid, _, lease = new_instance(bob, "e-manage")
        assert lease.manage is not None and lease.manage.server_url == srv.live.url
        # Both guests start from the same disk: same machine-id, same hostname.
        facts = {"machine_id": "same-machine-id", "hostname": "guest"}
        r = httpx.post(
            srv.live.url + "/api/v1/agent/enroll",
            json={"token": lease.manage.token, "facts": facts},
            timeout=TIMEOUT,
        )
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "active"
        devices.append((iid, r.json()["device_id"]))
        # The token was for one use.
        again = httpx.post(
            srv.live.url + "/api/v1/agent/enroll",
            json={"token": lease.manage.token, "facts": facts},
            timeout=TIMEOUT,
        )
        assert again.status_code == 401
        # Enrolled: later leases carry no token.
        assert checkin(bob, iid).manage is None
    assert devices[0][1] != devices[1][1]
    cvds = {c["device_id"]: c for c in srv.admin.get("/cvds").json()}
    for iid, did in devices:
        assert cvds[did]["name"] == f"flex-bob-{iid[:8]}" and cvds[did]["policy"] == "flexcvd"
        assert srv.admin.get(f"/flex/instances/{iid}").json()["device"] == did


def test_an_old_token_is_revoked_when_a_new_lease_brings_another(
    srv: Srv, image: dict[str, Any]
) -> None:
    if srv.admin.get("/policies/flexcvd").status_code == 404:
        assert srv.admin.post("/policies", json={"name": "flexcvd"}).status_code == 201
    entitle(srv, "e-manage2", users=["bob"], manage=True, cvd_policy="flexcvd")
    bob = srv.user("bob")
    iid, _, first = new_instance(bob, "e-manage2")
    second = checkin(bob, iid)
    assert first.manage and second.manage and first.manage.token != second.manage.token
    facts = {"machine_id": "m", "hostname": "guest"}
    old = httpx.post(
        srv.live.url + "/api/v1/agent/enroll",
        json={"token": first.manage.token, "facts": facts},
        timeout=TIMEOUT,
    )
    assert old.status_code == 401


# --- who reaches what ---------------------------------------------------------------------------
def test_instances_of_others_are_not_found(srv: Srv, image: dict[str, Any]) -> None:
    entitle(srv, "e-own", users=["bob", "eve"])
    bob, eve = srv.user("bob"), srv.user("eve")
    iid, _, _ = new_instance(bob, "e-own")
    for method, path in [
        ("GET", f"/flex/my/instances/{iid}/manifest"),
        ("GET", f"/flex/my/instances/{iid}/pieces/0"),
        ("POST", f"/flex/my/instances/{iid}/checkin"),
    ]:
        body = {"client_time": "2026-11-30T06:00:00Z"} if method == "POST" else None
        assert eve.request(method, path, json=body).status_code == 404, path
    assert iid not in [i["id"] for i in eve.get("/flex/my/instances").json()]
    assert iid in [i["id"] for i in bob.get("/flex/my/instances").json()]


def test_updates_and_deletes(srv: Srv, image: dict[str, Any], tmp_path: Path) -> None:
    admin = srv.admin
    bob, eve = srv.user("bob"), srv.user("eve")
    # what is in use is not deleted (this test's own entitlement names the image and the
    # policy, whatever the other tests of the module did before it)
    entitle(srv, "e-del", users=["bob"])
    assert admin.delete("/flex/images/win").status_code == 409
    assert admin.delete("/flex/policies/std").status_code == 409
    iid, _, _ = new_instance(bob, "e-del")
    assert admin.delete("/flex/entitlements/e-del").status_code == 409
    assert admin.post(f"/flex/instances/{iid}/revoke", json={}).status_code == 200
    assert admin.delete("/flex/entitlements/e-del").status_code == 204
    assert admin.get("/flex/entitlements/e-del").status_code == 404
    # an entitlement's users replaced
    entitle(srv, "e-upd", users=["bob"])
    r = admin.put("/flex/entitlements/e-upd", json={"users": ["eve"]})
    assert r.status_code == 200 and r.json()["users"] == ["eve"]
    assert "e-upd" not in [e["name"] for e in bob.get("/flex/my/entitlements").json()]
    assert "e-upd" in [e["name"] for e in eve.get("/flex/my/entitlements").json()]
    # unused things go
    assert admin.post("/flex/policies", json={"name": "p-unused"}).status_code == 201
    assert admin.delete("/flex/policies/p-unused").status_code == 204
    assert admin.post("/groups", json={"name": "tmpg"}).status_code == 201
    assert admin.delete("/groups/tmpg").status_code == 204
    assert admin.get("/groups/tmpg").status_code == 404
    tiny = tmp_path / "tiny.raw"
    tiny.write_bytes(random.Random(9).randbytes(100_000))
    assert upload(admin, "tiny", tiny).status_code == 201
    assert admin.delete("/flex/images/tiny").status_code == 204
    assert "tiny" not in [i["name"] for i in admin.get("/flex/images").json()]
    actions = {a["action"] for a in srv.live.audit() if a["actor"] == "admin"}
    assert {
        "flex.image.register",
        "flex.image.delete",
        "flex.policy.create",
        "flex.policy.delete",
        "flex.entitle",
        "flex.entitlement.update",
        "flex.entitlement.delete",
        "group.create",
        "group.delete",
    } <= actions
