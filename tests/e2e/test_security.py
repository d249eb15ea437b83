"""Each security boundary, proved over real HTTP against a running `lamina server`.

One server per module (and per xdist worker): two endpoints A and B enrolled,
centralized and synced by real agents; a pending device P; a help-desk user and
a read-only user. Setup goes through the CLI as an admin would; the probes are
raw HTTP requests, so a test fails if the server lets the request through.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from sqlalchemy import delete, select, update

from lamina.db.engine import make_engine, write_tx
from lamina.db.models import cvd_blobs, cvds
from lamina.protocol.bundle import MEDIA_TYPE
from lamina.store.blob import BlobKind, blob_id, compress
from tests.e2e.conftest import ADMIN_PASSWORD, Deployment, Lamina, _deployment
from tests.e2e.test_hostile_agent import file_entry, tree

API = "/api/v1"
HD_PASSWORD = "helpdesk-password-1"
RO_PASSWORD = "readonly-password-1"


@dataclass
class Endpoint:
    host: str
    root: Path
    state: Path
    agent: Lamina
    credential: str = ""
    device_id: str = ""
    cvd_id: str = ""
    snapshot: str = ""
    secret_path: str = ""
    secret: bytes = b""


@dataclass
class World:
    dep: Deployment
    tmp: Path
    admin: Lamina
    admin_token: str
    enroll_token: str
    a: Endpoint
    b: Endpoint
    pending_id: str
    hd_token: str
    ro_token: str
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=self.dep.url + API, headers=headers, timeout=30)
        self.clients.append(c)
        return c


def make_root(root: Path, host: str, user: str) -> tuple[str, bytes]:
    """A tiny endpoint: a hostname (the agent reports it) and one private file."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text(host + "\n")
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    docs = root / "home" / user / "Documents"
    docs.mkdir(parents=True)
    secret = f"{user}'s private notes on {host}\n".encode() * 50
    (docs / "private.txt").write_bytes(secret)
    return f"home/{user}/Documents/private.txt", secret


def enroll(admin: Lamina, url: str, token: str, tmp: Path, host: str, user: str) -> Endpoint:
    ep = Endpoint(host, tmp / host, tmp / f"{host}-state", Lamina(tmp / "people" / f"agent-{host}"))
    ep.secret_path, ep.secret = make_root(ep.root, host, user)
    ep.agent.run(
        "agent",
        "enroll",
        "--server",
        url,
        "--token",
        token,
        "--root",
        str(ep.root),
        "--state",
        str(ep.state),
    )
    st = json.loads((ep.state / "agent.json").read_text())
    ep.credential, ep.device_id = st["credential"], st["device_id"]
    return ep


def login_token(url: str, user: str, password: str) -> str:
    r = httpx.post(url + API + "/auth/login", json={"user": user, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("security")
    gen = _deployment(tmp, [], 1)
    dep = next(gen)
    admin = Lamina(tmp / "people" / "admin").login(dep.url)
    admin.run("policy", "create", "std", "--interval", "1h")
    token = admin.json("token", "create", "--expires", "1h", "--uses", "20")["token"]
    admin_token = login_token(dep.url, "admin", ADMIN_PASSWORD)
    # The rest of the setup over HTTP: each CLI start costs ~0.6 s of CPU.
    api = httpx.Client(
        base_url=dep.url + API, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60
    )
    a = enroll(admin, dep.url, token, tmp, "desk-a", "alice")
    b = enroll(admin, dep.url, token, tmp, "desk-b", "bob")
    for ep in (a, b):
        r = api.post(f"/devices/{ep.device_id}/centralize", json={"policy": "std"})
        assert r.status_code == 201, r.text
        ep.cvd_id = r.json()["id"]
        out = ep.agent.json("agent", "run", "--once", "--state", str(ep.state))
        assert out["synced"], out
        ep.snapshot = api.get(f"/cvds/{ep.cvd_id}/snapshots").json()[-1]["id"]
    facts = {"machine_id": secrets.token_hex(16), "hostname": "desk-pending"}
    r = api.post("/agent/enroll", json={"token": token, "facts": facts})
    assert r.status_code == 201 and r.json()["status"] == "pending", r.text
    pending_id = r.json()["device_id"]
    for name, role, password in (("hd", "helpdesk", HD_PASSWORD), ("ro", "readonly", RO_PASSWORD)):
        admin.run("user", "create", name, "--role", role, "--password-stdin", input=password + "\n")
    api.close()
    w = World(
        dep=dep,
        tmp=tmp,
        admin=admin,
        admin_token=admin_token,
        enroll_token=token,
        a=a,
        b=b,
        pending_id=pending_id,
        hd_token=login_token(dep.url, "hd", HD_PASSWORD),
        ro_token=login_token(dep.url, "ro", RO_PASSWORD),
    )
    try:
        yield w
    finally:
        for c in w.clients:
            c.close()
        with contextlib.suppress(StopIteration):
            next(gen)


def fleet_state(w: World) -> dict[str, Any]:
    """Everything an admin can see that a refused request must not have changed."""
    c = w.client(w.admin_token)

    def get(path: str) -> Any:
        r = c.get(path)
        assert r.status_code == 200, (path, r.text)
        return r.json()

    return {
        "cvds": sorted(
            (x["id"], x["name"], x["state"], x["policy_version"], x["snapshots"], x["device_id"])
            for x in get("/cvds")
        ),
        "devices": sorted((x["id"], x["status"]) for x in get("/devices")),
        "policies": sorted(
            (x["name"], x["version"], json.dumps(x["settings"], sort_keys=True))
            for x in get("/policies")
        ),
        "tasks": sorted((x["id"], x["state"], x["progress"]) for x in get("/tasks")),
        "users": sorted((x["name"], x["role"], x["disabled"]) for x in get("/users")),
        "snapshots": {
            e.cvd_id: [s["id"] for s in get(f"/cvds/{e.cvd_id}/snapshots")] for e in (w.a, w.b)
        },
    }


def assert_json_error(
    r: httpx.Response, status: int | tuple[int, ...], code: str | None = None
) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (
        f"{r.request.method} {r.request.url} -> {r.status_code} {r.text[:300]}"
    )
    assert r.headers["content-type"].startswith("application/json"), r.headers
    doc = r.json()
    assert isinstance(doc, dict) and set(doc) >= {"code", "message"}, doc
    assert isinstance(doc["message"], str) and doc["message"].strip(), doc
    if code is not None:
        assert doc["code"] == code, doc
    return doc


def probe(c: httpx.Client, cases: list[tuple[str, str, Any]], expect: tuple[int, ...]) -> list[str]:
    """Send every request; return a line for each one the server did not refuse as expected."""
    wrong = []
    for method, path, body in cases:
        r = c.request(method, path, json=body) if body is not None else c.request(method, path)
        ok = r.status_code in expect
        if ok:
            try:
                doc = r.json()
                ok = bool(doc.get("code")) and bool(doc.get("message"))
            except ValueError:
                ok = False
        if not ok:
            wrong.append(f"{method} {path} -> {r.status_code} {r.text[:200]}")
    return wrong


SETTINGS = {"interval": 60, "keep_last": 1}


def session_id(w: World, token: str) -> str:
    """The id of the session ``token`` is (as its owner lists it)."""
    r = httpx.get(
        w.dep.url + API + "/tokens", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    [me] = [t for t in r.json() if t["current"]]
    return str(me["id"])


def enrollment_id(w: World) -> str:
    """The id of the module's enrollment token."""
    tokens = w.client(w.admin_token).get("/tokens").json()
    return str(next(t["id"] for t in tokens if t["kind"] == "enrollment"))


# --- device credentials ---------------------------------------------------------------------


def test_device_reads_its_own_cvd(world: World) -> None:
    a = world.a
    c = world.client(a.credential)
    r = c.get(f"/cvds/{a.cvd_id}")
    assert (
        r.status_code == 200 and r.json()["id"] == a.cvd_id and r.json()["device_id"] == a.device_id
    )
    snaps = c.get(f"/cvds/{a.cvd_id}/snapshots")
    assert snaps.status_code == 200 and a.snapshot in [s["id"] for s in snaps.json()]
    top = c.get(f"/cvds/{a.cvd_id}/snapshots/latest/browse")
    assert top.status_code == 200 and {"etc", "home"} <= {e["name"] for e in top.json()}
    f = c.get(f"/cvds/{a.cvd_id}/snapshots/{a.snapshot}/file", params={"path": a.secret_path})
    assert f.status_code == 200 and f.content == a.secret
    # Its own CVD's routes do not hand out another CVD's snapshot either.
    r = c.get(f"/cvds/{a.cvd_id}/snapshots/{world.b.snapshot}/browse")
    assert_json_error(r, 404, "not_found")
    r = c.get(
        f"/cvds/{a.cvd_id}/snapshots/{world.b.snapshot}/file", params={"path": world.b.secret_path}
    )
    assert_json_error(r, 404, "not_found")


def test_device_credential_reaches_nothing_else(world: World) -> None:
    a, b = world.a, world.b
    c = world.client(a.credential)
    before = fleet_state(world)
    # Control: the same paths answer B's own credential, so a 403 below is the boundary.
    own = world.client(b.credential)
    assert own.get(f"/cvds/{b.cvd_id}/snapshots/latest/browse").status_code == 200
    r = own.get(f"/cvds/{b.cvd_id}/snapshots/{b.snapshot}/file", params={"path": b.secret_path})
    assert r.status_code == 200 and r.content == b.secret

    other_cvd = [
        ("GET", f"/cvds/{b.cvd_id}", None),
        ("GET", f"/cvds/{b.host}", None),  # by name as well as by id
        ("GET", f"/cvds/{b.cvd_id}/snapshots", None),
        ("GET", f"/cvds/{b.cvd_id}/snapshots/latest/browse", None),
        ("GET", f"/cvds/{b.cvd_id}/snapshots/{b.snapshot}/browse?path=home", None),
        ("GET", f"/cvds/{b.cvd_id}/snapshots/{b.snapshot}/file?path={b.secret_path}", None),
        ("GET", f"/cvds/{b.cvd_id}/snapshots/latest/file?path={b.secret_path}", None),
        ("POST", f"/cvds/{b.cvd_id}/sync", None),
        ("POST", f"/cvds/{b.cvd_id}/restore", {"snapshot": "latest"}),
        ("POST", f"/cvds/{b.cvd_id}/restore", {"snapshot": b.snapshot, "paths": [b.secret_path]}),
        ("POST", f"/cvds/{b.cvd_id}/revert", {"snapshot": "latest"}),
        ("POST", f"/cvds/{b.cvd_id}/archive", None),
        ("POST", f"/cvds/{b.cvd_id}/migrate", {"to": world.pending_id, "dry_run": True}),
        ("POST", f"/cvds/{b.cvd_id}/migrate", {"to": world.pending_id}),
        ("POST", f"/cvds/{b.cvd_id}/restore-system", {"to": world.pending_id}),
        ("POST", f"/cvds/{a.cvd_id}/migrate", {"to": world.pending_id}),  # nor its own
    ]
    wrong = probe(c, other_cvd, (403,))
    admin_routes = [
        ("GET", "/devices", None),
        ("GET", "/devices?pending=true", None),
        ("POST", "/policies", {"name": "device-made"}),
        ("PUT", "/policies/std", {"settings": SETTINGS}),
        ("POST", "/tokens", {"expires_in": 3600}),
        ("GET", "/users", None),
        (
            "POST",
            "/users",
            {"name": "device-made", "password": "password-123", "role": "administrator"},
        ),
        ("GET", "/audit", None),
        ("GET", "/cvds", None),
        ("GET", "/tasks", None),
        ("POST", f"/devices/{world.pending_id}/centralize", {"policy": "std"}),
        ("POST", f"/devices/{world.pending_id}/reject", None),
        # Operations on its own CVD are admin actions too.
        ("POST", f"/cvds/{a.cvd_id}/sync", None),
        ("POST", f"/cvds/{a.cvd_id}/archive", None),
        # Tokens, users and revocation.
        ("GET", "/tokens", None),
        ("DELETE", f"/tokens/{session_id(world, world.admin_token)}", None),
        ("DELETE", f"/tokens/{enrollment_id(world)}", None),
        ("POST", "/users/ro/disable", None),
        ("POST", "/users/ro/enable", None),
        ("DELETE", "/users/ro", None),
        ("PUT", "/users/ro/password", {"password": "device-made-1"}),
        ("POST", f"/devices/{b.device_id}/revoke", None),
        ("POST", f"/devices/{a.device_id}/revoke", None),
        ("POST", "/auth/logout", None),
        ("POST", "/auth/tokens", {"name": "device-made"}),
    ]
    wrong += probe(c, admin_routes, (401, 403))
    assert not wrong, "device A's credential got through:\n" + "\n".join(wrong)
    assert fleet_state(world) == before


def test_device_cannot_claim_or_report_another_devices_task(world: World) -> None:
    a, b = world.a, world.b
    admin = world.client(world.admin_token)
    r = admin.post(f"/cvds/{b.cvd_id}/sync")
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["state"] == "queued" and task["device_id"] == b.device_id

    ca = world.client(a.credential)
    assert_json_error(ca.get(f"/tasks/{task['id']}"), 403, "forbidden")
    work = ca.get("/agent/work")
    assert work.status_code == 200 and task["id"] not in [w["task_id"] for w in work.json()]
    for rep in (
        {"progress": 100, "state": "done", "result": {"forged": True}},
        {"progress": 0, "state": "failed", "message": "cancelled by A"},
    ):
        assert_json_error(ca.post(f"/agent/tasks/{task['id']}", json=rep), 403, "forbidden")
    after = admin.get(f"/tasks/{task['id']}").json()
    assert (after["state"], after["progress"], after["result"], after["message"]) == (
        "queued",
        0,
        {},
        "",
    )

    # Control: B itself may claim and report on it.
    cb = world.client(b.credential)
    assert task["id"] in [w["task_id"] for w in cb.get("/agent/work").json()]
    r = cb.post(f"/agent/tasks/{task['id']}", json={"progress": 100, "state": "done"})
    assert r.status_code == 200 and r.json()["state"] == "done"


def test_rejected_device_credential_stops_working(world: World) -> None:
    r = enroll(
        world.admin, world.dep.url, world.enroll_token, world.tmp, "desk-rejected", "mallory"
    )
    c = world.client(r.credential)
    ok = c.post("/agent/config", json={"state": "idle"})
    assert ok.status_code == 200 and ok.json()["status"] == "pending"
    assert c.get("/agent/work").status_code == 200

    world.admin.run("device", "reject", r.device_id)
    after: list[tuple[str, str, Any]] = [
        ("POST", "/agent/config", {"state": "idle"}),
        ("GET", "/agent/work", None),
        ("POST", "/agent/missing", {"ids": []}),
        ("POST", "/agent/commit", {"root": "00" * 32, "files": 0, "bytes": 0}),
        ("GET", f"/cvds/{world.a.cvd_id}", None),
    ]
    for method, path, body in after:
        resp = c.request(method, path, json=body) if body is not None else c.request(method, path)
        assert_json_error(resp, 401, "unauthorized")
    p = r.agent.run("agent", "run", "--once", "--state", str(r.state), ok=False)
    assert p.returncode != 0
    devices = {d["id"]: d for d in world.admin.json("device", "list")}
    assert devices[r.device_id]["status"] == "rejected"


def test_default_body_limit(world: World) -> None:
    """A bundle that declares more than the default 64 MiB is refused before it is read."""
    limit = 64 * 1024 * 1024
    head = (
        f"POST {API}/agent/bundles HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {world.a.credential}\r\n"
        f"Content-Type: application/vnd.lamina.bundle+msgpack\r\n"
        f"Content-Length: {limit + 1}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", world.dep.servers[0].port), timeout=30) as s:
        s.sendall(head.encode() + b"\x81")  # one byte of the promised 64 MiB
        data = b""
        while part := s.recv(65536):
            data += part
    header, _, body = data.partition(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.1 413 "), data[:300]
    doc = json.loads(body)
    assert doc["code"] == "too_large" and str(limit) in doc["message"], doc


# --- users and roles ---------------------------------------------------------------------


def test_helpdesk_operates_cvds_but_not_policies_or_users(world: World) -> None:
    c = world.client(world.hd_token)
    me = c.get("/auth/me").json()
    assert me["role"] == "helpdesk" and "policy.write" not in me["permissions"]
    before = fleet_state(world)
    wrong = probe(
        c,
        [
            ("POST", "/policies", {"name": "hd-policy", "settings": SETTINGS}),
            ("PUT", "/policies/std", {"settings": SETTINGS}),
            (
                "POST",
                "/users",
                {"name": "hd-made", "password": "password-123", "role": "administrator"},
            ),
            ("GET", "/users", None),
            ("GET", "/audit", None),
            ("POST", "/users/ro/disable", None),
            ("POST", "/users/ro/enable", None),
            ("DELETE", "/users/ro", None),
            ("PUT", "/users/ro/password", {"password": "hd-made-pass-1"}),
            ("PUT", "/users/admin/password", {"password": "hd-made-pass-1"}),
            ("DELETE", f"/tokens/{session_id(world, world.admin_token)}", None),
            ("DELETE", f"/tokens/{session_id(world, world.ro_token)}", None),
            *DRIVER_WRITES,
        ],
        (403,),
    )
    assert not wrong, "help desk got through:\n" + "\n".join(wrong)
    for path in DRIVER_READS:  # driver reads need only `read`
        assert c.get(path).status_code in (200, 404), path
    # It sees enrollment tokens (it may make them) and its own sessions, no one else's.
    seen = c.get("/tokens").json()
    assert {t["kind"] for t in seen} == {"session", "enrollment"}
    assert {t["owner"] for t in seen if t["kind"] == "session"} == {"hd"}
    assert fleet_state(world) == before

    cvds = c.get("/cvds")
    assert cvds.status_code == 200 and {world.a.cvd_id, world.b.cvd_id} <= {
        x["id"] for x in cvds.json()
    }
    r = c.post(f"/cvds/{world.a.cvd_id}/sync")
    assert r.status_code == 202, r.text
    task = r.json()
    assert (
        task["state"] == "queued"
        and task["created_by"] == "hd"
        and task["cvd_id"] == world.a.cvd_id
    )
    audit = world.client(world.admin_token).get("/audit").json()
    assert any(
        e["actor"] == "hd"
        and e["action"] == "cvd.sync"
        and e["target"] == world.a.cvd_id
        and e["detail"].get("task") == task["id"]
        for e in audit
    )


def test_readonly_user_changes_nothing(world: World) -> None:
    a = world.a
    c = world.client(world.ro_token)
    before = fleet_state(world)
    wrong = probe(
        c,
        [
            ("POST", f"/devices/{world.pending_id}/centralize", {"policy": "std"}),
            ("POST", f"/devices/{world.pending_id}/reject", None),
            ("POST", f"/cvds/{a.cvd_id}/sync", None),
            ("POST", f"/cvds/{a.cvd_id}/restore", {"snapshot": "latest"}),
            (
                "POST",
                f"/cvds/{a.cvd_id}/restore",
                {"snapshot": a.snapshot, "paths": [a.secret_path]},
            ),
            ("POST", f"/cvds/{a.cvd_id}/revert", {"snapshot": a.snapshot}),
            ("POST", f"/cvds/{a.cvd_id}/archive", None),
            ("POST", f"/cvds/{a.cvd_id}/migrate", {"to": world.pending_id, "dry_run": True}),
            ("POST", f"/cvds/{a.cvd_id}/migrate", {"to": world.pending_id}),
            ("POST", f"/cvds/{a.cvd_id}/restore-system", {"to": world.pending_id}),
            ("POST", "/tokens", {"expires_in": 3600}),
            ("POST", "/tokens", {"expires_in": 3600, "policy": "std"}),
            ("POST", "/policies", {"name": "ro-policy"}),
            ("PUT", "/policies/std", {"settings": SETTINGS}),
            (
                "POST",
                "/users",
                {"name": "ro-made", "password": "password-123", "role": "administrator"},
            ),
            ("GET", "/audit", None),
            ("POST", f"/devices/{world.b.device_id}/revoke", None),
            ("POST", f"/devices/{world.pending_id}/revoke", None),
            ("DELETE", f"/tokens/{enrollment_id(world)}", None),
            ("DELETE", f"/tokens/{session_id(world, world.admin_token)}", None),
            ("POST", "/users/hd/disable", None),
            ("POST", "/users/ro/enable", None),
            ("DELETE", "/users/hd", None),
            ("PUT", "/users/hd/password", {"password": "ro-made-pass-1"}),
            ("PUT", "/users/ro/password", {"password": "ro-made-pass-1"}),  # no current one
            *DRIVER_WRITES,
        ],
        (401, 403),
    )
    assert not wrong, "read-only user got through:\n" + "\n".join(wrong)
    mine = c.get("/tokens").json()
    assert mine and {(t["kind"], t["owner"]) for t in mine} == {("session", "ro")}
    assert fleet_state(world) == before

    cvds = c.get("/cvds")
    assert cvds.status_code == 200 and {a.cvd_id, world.b.cvd_id} <= {x["id"] for x in cvds.json()}
    snaps = c.get(f"/cvds/{a.cvd_id}/snapshots")
    assert snaps.status_code == 200 and a.snapshot in [s["id"] for s in snaps.json()]
    assert c.get(f"/cvds/{a.cvd_id}/snapshots/latest/browse").status_code == 200
    assert c.get("/policies").status_code == 200 and c.get("/devices").status_code == 200


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from another loopback address (another machine)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(transport=transport, timeout=30)


def test_login_lockout_is_per_user_and_client(world: World) -> None:
    """Review finding 16: failures from one address never lock a user out elsewhere."""
    name = f"rl-{secrets.token_hex(4)}"
    password = "right-password-1"
    world.admin.run(
        "user", "create", name, "--role", "readonly", "--password-stdin", input=password + "\n"
    )
    url = world.dep.url + API + "/auth/login"
    attacker, elsewhere = from_address("127.0.0.2"), from_address("127.0.0.3")
    world.clients += [attacker, elsewhere]
    assert attacker.post(url, json={"user": name, "password": password}).status_code == 200
    for i in range(5):
        r = attacker.post(url, json={"user": name, "password": f"wrong-{i}"})
        assert_json_error(r, 401, "unauthorized")
    doc = assert_json_error(
        attacker.post(url, json={"user": name, "password": password}), 429, "rate_limited"
    )
    assert name in doc["message"] and "127.0.0.2" in doc["message"]
    # The user still logs in from their own machine.
    assert elsewhere.post(url, json={"user": name, "password": password}).status_code == 200
    # Anyone may fail as admin from their address: the administrator is not locked out.
    for i in range(7):
        r = attacker.post(url, json={"user": "admin", "password": f"wrong-{i}"})
        assert r.status_code in (401, 429), r.text
    assert_json_error(
        attacker.post(url, json={"user": "admin", "password": ADMIN_PASSWORD}), 429, "rate_limited"
    )
    ok = elsewhere.post(url, json={"user": "admin", "password": ADMIN_PASSWORD})
    assert ok.status_code == 200, ok.text
    # A name that is no account answers the same way, lock-out included.
    ghost = f"ghost-{secrets.token_hex(4)}"
    answers = [
        attacker.post(url, json={"user": ghost, "password": f"wrong-{i}"}).status_code
        for i in range(6)
    ]
    assert answers == [401] * 5 + [429]
    # The audit log is bounded: the first failure of a run and the lock-out, not every guess;
    # nothing for a name that is no account (anyone can send those).
    audit = world.client(world.admin_token).get("/audit", params={"limit": 1000}).json()
    failed = [e for e in audit if e["action"] == "auth.login_failed" and e["target"] == name]
    assert sorted(e["detail"]["failures"] for e in failed) == [1, 5]
    assert all(e["actor"] == name and e["detail"]["client"] == "127.0.0.2" for e in failed)
    assert not [e for e in audit if e["target"] == ghost]
    admin_failed = [
        e for e in audit if e["action"] == "auth.login_failed" and e["target"] == "admin"
    ]
    assert len(admin_failed) <= 3  # first failure, lock-out, and the back-off lock


#: The driver library's writes need `driver.write` (administrators only).
DRIVER_WRITES: list[tuple[str, str, Any]] = [
    ("POST", "/drivers/import?name=hd-pack", None),
    ("DELETE", "/drivers/some-pack", None),
    ("POST", "/driver-profiles", {"name": "p", "packs": ["x"], "matches": ["sys_vendor=*"]}),
    ("PUT", "/driver-profiles/some-profile", {"packs": ["x"]}),
    ("DELETE", "/driver-profiles/some-profile", None),
]
#: Its reads need `read`.
DRIVER_READS = ["/drivers", "/driver-profiles", "/drivers/some-pack", "/driver-profiles/x/devices"]

UNAUTH_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/auth/me", None),
    ("GET", "/cvds", None),
    ("GET", "/cvds/{a}", None),
    ("GET", "/cvds/{a}/snapshots/latest/browse", None),
    ("POST", "/cvds/{a}/sync", None),
    ("GET", "/devices", None),
    ("POST", "/policies", {"name": "anon"}),
    ("POST", "/tokens", {"expires_in": 3600}),
    ("GET", "/audit", None),
    ("POST", "/blobs/read", {"ids": []}),
    ("POST", "/blobs/delta", {"items": []}),
    ("POST", "/agent/config", {"state": "idle"}),
    ("POST", "/agent/missing", {"ids": []}),
    ("POST", "/agent/bundles", None),
    ("POST", "/agent/commit", {"root": "00" * 32, "files": 0, "bytes": 0}),
    ("GET", "/agent/work", None),
    ("POST", "/auth/logout", None),
    ("POST", "/auth/tokens", {"name": "anon"}),
    ("GET", "/tokens", None),
    ("DELETE", "/tokens/{a}", None),
    ("POST", "/users/admin/disable", None),
    ("POST", "/users/admin/enable", None),
    ("DELETE", "/users/admin", None),
    ("PUT", "/users/admin/password", {"password": "new-password-123"}),
    ("POST", "/devices/{a}/revoke", None),
    ("GET", "/status", None),
    ("GET", "/fleet", None),
    ("GET", "/events", None),
    ("POST", "/events/1/ack", None),
    ("GET", "/devices/{a}", None),
    ("GET", "/drivers", None),
    ("GET", "/drivers/{a}", None),
    ("DELETE", "/drivers/{a}", None),
    ("POST", "/drivers/import?name=anon", None),
    ("GET", "/driver-profiles", None),
    ("POST", "/driver-profiles", {"name": "anon", "packs": ["x"], "matches": ["sys_vendor=*"]}),
    ("GET", "/driver-profiles/{a}", None),
    ("PUT", "/driver-profiles/{a}", {"packs": ["x"]}),
    ("DELETE", "/driver-profiles/{a}", None),
    ("GET", "/driver-profiles/{a}/devices", None),
    ("POST", "/cvds/{a}/migrate", {"to": "x", "dry_run": True}),
    ("POST", "/cvds/{a}/restore-system", {"to": "x"}),
    ("POST", "/flex/images/upload?name=x", None),
    ("GET", "/flex/instances", None),
    ("POST", "/flex/policies", {"name": "anon"}),
    ("POST", "/groups", {"name": "anon"}),
    ("GET", "/flex/key", None),
    ("GET", "/flex/my/entitlements", None),
    ("POST", "/flex/my/instances/{a}/checkin", {"client_time": "2026-01-01T00:00:00Z"}),
    ("GET", "/flex/my/instances/{a}/pieces/0", None),
]
BAD_AUTH = [
    None,
    "Bearer",
    "Bearer not-a-token",
    "Bearer lmu_" + "A" * 43,
    "Bearer lmd_" + "A" * 43,
    "Bearer lme_" + "A" * 43,
    "Basic YWRtaW46YWRtaW4tcGFzc3dvcmQtMTIz",  # admin:admin-password-123
    "bearer {admin}",  # the right token with a mangled scheme
]


def test_unauthenticated_requests_get_401_json(world: World) -> None:
    wrong = []
    with httpx.Client(base_url=world.dep.url + API, timeout=30) as c:
        for auth in BAD_AUTH:
            headers = {"Authorization": auth.format(admin=world.admin_token)} if auth else {}
            for method, path, body in UNAUTH_ROUTES:
                r = c.request(method, path.format(a=world.a.cvd_id), json=body, headers=headers)
                try:
                    assert_json_error(r, 401, "unauthorized")
                except AssertionError as e:
                    wrong.append(f"[{auth}] {e}")
    assert not wrong, "\n".join(wrong)


def test_user_token_is_not_a_device_credential(world: World) -> None:
    c = world.client(world.admin_token)
    assert_json_error(c.post("/agent/config", json={"state": "idle"}), 401, "unauthorized")
    assert_json_error(
        c.post("/agent/commit", json={"root": "00" * 32, "files": 0, "bytes": 0}),
        401,
        "unauthorized",
    )


def test_admin_actions_are_audited(world: World) -> None:
    admin, a = world.admin, world.a
    pol = f"audit-{secrets.token_hex(3)}"
    admin.run("policy", "create", pol, "--interval", "2h")
    admin.run("policy", "update", pol, "--interval", "3h")
    tok = admin.json("token", "create", "--expires", "2h", "--policy", pol)
    user = f"aud-{secrets.token_hex(3)}"
    admin.run(
        "user", "create", user, "--role", "readonly", "--password-stdin", input="aud-password-1\n"
    )
    task = admin.json("cvd", "sync", a.cvd_id)

    entries = world.client(world.admin_token).get("/audit", params={"limit": 1000}).json()

    def find(action: str, target: str) -> dict[str, Any]:
        hits = [e for e in entries if e["action"] == action and e["target"] == target]
        assert len(hits) == 1, (action, target, hits)
        assert hits[0]["actor"] == "admin" and hits[0]["time"], hits[0]
        return dict(hits[0])

    assert find("policy.create", pol)["detail"]["settings"]["interval"] == 7200
    upd = find("policy.update", pol)["detail"]
    assert upd["version"] == 2 and upd["settings"]["interval"] == 3 * 3600
    assert find("token.create", tok["id"])["detail"]["policy"] == pol
    assert find("user.create", user)["detail"]["role"] == "readonly"
    syncs = [
        e for e in entries if e["action"] == "cvd.sync" and e["detail"].get("task") == task["id"]
    ]
    assert len(syncs) == 1 and syncs[0]["actor"] == "admin" and syncs[0]["target"] == a.cvd_id
    cent = [e for e in entries if e["action"] == "cvd.centralize" and e["target"] == a.cvd_id]
    assert (
        len(cent) == 1
        and cent[0]["actor"] == "admin"
        and cent[0]["detail"]["device"] == a.device_id
    )
    # Newest first, and no secret in it: the enrollment token itself is never logged.
    ids = [int(e["id"]) for e in entries]
    assert ids == sorted(ids, reverse=True)
    assert tok["token"] not in json.dumps(entries)


def test_openapi_lists_every_route_with_a_summary(world: World) -> None:
    import importlib
    import pkgutil

    from fastapi import APIRouter
    from fastapi.routing import APIRoute

    import lamina.server.api

    r = httpx.get(world.dep.url + API + "/openapi.json", timeout=30)
    assert r.status_code == 200
    paths = r.json()["paths"]
    listed = {(m.upper(), p): op for p, ops in paths.items() for m, op in ops.items()}
    # Every route of every router module of the API, with the summary written for it:
    # FastAPI would otherwise make one up from the function's name.
    health = listed.get(("GET", API + "/health"), {}).get("summary", "")
    assert health.strip() and health != "Health", health
    written = {("GET", API + "/health"): health}
    for mod in pkgutil.iter_modules(lamina.server.api.__path__, "lamina.server.api."):
        router = getattr(importlib.import_module(mod.name), "router", None)
        if not isinstance(router, APIRouter):
            continue
        for route in router.routes:
            assert isinstance(route, APIRoute), route
            for m in route.methods or ():
                written[(m, API + route.path)] = route.summary or ""
    assert len(written) > 30
    assert set(listed) == set(written)
    no_summary = sorted(f"{m} {p}" for (m, p), summary in written.items() if not summary.strip())
    assert not no_summary, f"routes without a summary: {no_summary}"
    assert {k: op.get("summary") for k, op in listed.items()} == written
    for must in [
        ("POST", API + "/agent/bundles"),
        ("POST", API + "/auth/login"),
        ("GET", API + "/cvds/{ref}/snapshots/{snapshot}/file"),
        ("POST", API + "/agent/tasks/{task_id}"),
    ]:
        assert must in listed


# --- revocation (review finding 8) ------------------------------------------------------------


def admin_api(w: World) -> httpx.Client:
    return w.client(w.admin_token)


def enroll_raw(w: World, token: str, host: str) -> httpx.Response:
    facts = {"machine_id": secrets.token_hex(16), "hostname": host}
    return httpx.post(
        w.dep.url + API + "/agent/enroll", json={"token": token, "facts": facts}, timeout=30
    )


def test_enrollment_token_uses_are_counted_and_revocable(world: World) -> None:
    api = admin_api(world)
    tok = api.post("/tokens", json={"expires_in": 3600}).json()
    assert tok["uses"] == 1  # the default
    assert enroll_raw(world, tok["token"], "desk-once-1").status_code == 201
    doc = assert_json_error(enroll_raw(world, tok["token"], "desk-once-2"), 401, "unauthorized")
    assert "used up" in doc["message"]
    listed = {t["id"]: t for t in world.admin.json("token", "list")}
    t = listed[tok["id"]]
    assert (t["kind"], t["owner"], t["uses"], t["max_uses"], t["state"]) == (
        "enrollment",
        "admin",
        1,
        1,
        "used up",
    )
    assert t["created"] and t["expires"] and "token" not in t
    # A token for several devices, revoked after one: the next enrollment is refused.
    multi = world.admin.json("token", "create", "--uses", "3")
    assert enroll_raw(world, multi["token"], "desk-multi-1").status_code == 201
    out = world.admin.run("token", "revoke", multi["id"]).stdout
    assert "revoked" in out
    doc = assert_json_error(enroll_raw(world, multi["token"], "desk-multi-2"), 401, "unauthorized")
    assert "revoked" in doc["message"]
    listed = {t["id"]: t for t in world.admin.json("token", "list")}
    assert (listed[multi["id"]]["uses"], listed[multi["id"]]["state"]) == (1, "revoked")
    audit = api.get("/audit", params={"limit": 1000}).json()
    assert any(e["action"] == "token.revoke" and e["target"] == multi["id"] for e in audit)


def test_sessions_are_listed_and_revocable(world: World) -> None:
    name = f"sam-{secrets.token_hex(3)}"
    world.admin.run(
        "user", "create", name, "--role", "readonly", "--password-stdin", input="sam-password-1\n"
    )
    s1 = login_token(world.dep.url, name, "sam-password-1")
    s2 = login_token(world.dep.url, name, "sam-password-1")
    c1, c2 = world.client(s1), world.client(s2)
    assert c2.get("/auth/me").status_code == 200
    mine = c1.get("/tokens").json()
    assert len(mine) == 2 and {(t["kind"], t["owner"], t["state"]) for t in mine} == {
        ("session", name, "active")
    }
    by_current = {t["current"]: t for t in mine}
    assert by_current[False]["last_used"]  # s2 called /auth/me
    assert by_current[True]["expires"] and by_current[True]["created"]
    # The admin sees them among every token.
    all_ids = {t["id"] for t in world.admin.json("token", "list")}
    assert {t["id"] for t in mine} <= all_ids
    # One's own session is revoked by its owner; it stops working at once.
    s2_id = by_current[False]["id"]
    r = c1.delete(f"/tokens/{s2_id}")
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert_json_error(c2.get("/auth/me"), 401, "unauthorized")
    # Another user's session needs user.admin.
    assert_json_error(
        c1.delete(f"/tokens/{session_id(world, world.admin_token)}"), 403, "forbidden"
    )
    world.admin.run("token", "revoke", by_current[True]["id"])
    assert_json_error(c1.get("/auth/me"), 401, "unauthorized")
    # An API token for scripts: listed with its kind and name, revoked the same way.
    s3 = world.client(login_token(world.dep.url, name, "sam-password-1"))
    r = s3.post("/auth/tokens", json={"name": "nightly report", "expires_in": 86400})
    assert r.status_code == 201, r.text
    script = world.client(r.json()["token"])
    assert script.get("/auth/me").json()["name"] == name
    [api_tok] = [t for t in s3.get("/tokens").json() if t["kind"] == "api"]
    assert (api_tok["name"], api_tok["owner"], api_tok["state"]) == (
        "nightly report",
        name,
        "active",
    )
    assert s3.delete(f"/tokens/{api_tok['id']}").status_code == 200
    assert_json_error(script.get("/auth/me"), 401, "unauthorized")


def test_logout_revokes_the_session_and_forgets_it(world: World) -> None:
    name = f"lou-{secrets.token_hex(3)}"
    world.admin.run(
        "user", "create", name, "--role", "readonly", "--password-stdin", input="lou-password-1\n"
    )
    lou = Lamina(world.tmp / "people" / name).login(world.dep.url, name, "lou-password-1")
    saved = Path(lou.env["XDG_CONFIG_HOME"]) / "lamina" / "login.json"
    token = json.loads(saved.read_text())["token"]
    assert world.client(token).get("/auth/me").status_code == 200
    out = lou.run("logout").stdout
    assert "logged out" in out and not saved.exists()
    assert_json_error(world.client(token).get("/auth/me"), 401, "unauthorized")
    p = lou.run("device", "list", ok=False)
    assert p.returncode != 0 and "not logged in" in p.stderr
    audit = admin_api(world).get("/audit", params={"limit": 1000}).json()
    assert any(e["action"] == "auth.logout" and e["actor"] == name for e in audit)


def test_user_disable_enable_passwd_delete(world: World) -> None:
    name = f"uma-{secrets.token_hex(3)}"
    admin = world.admin
    admin.run(
        "user", "create", name, "--role", "helpdesk", "--password-stdin", input="uma-password-1\n"
    )
    t = login_token(world.dep.url, name, "uma-password-1")
    c = world.client(t)
    assert c.get("/auth/me").status_code == 200
    admin.run("user", "disable", name)
    doc = assert_json_error(c.get("/auth/me"), 401, "unauthorized")
    assert name in doc["message"] and "disabled" in doc["message"]
    r = httpx.post(
        world.dep.url + API + "/auth/login", json={"user": name, "password": "uma-password-1"}
    )
    assert_json_error(r, 401, "unauthorized")
    admin.run("user", "enable", name)
    assert c.get("/auth/me").status_code == 200
    # Her own password: the current one is needed; her other sessions are revoked, not this one.
    other = world.client(login_token(world.dep.url, name, "uma-password-1"))
    r = c.put(f"/users/{name}/password", json={"password": "uma-password-2", "current": "nope"})
    assert_json_error(r, 401, "unauthorized")
    r = c.put(
        f"/users/{name}/password",
        json={"password": "uma-password-2", "current": "uma-password-1"},
    )
    assert r.status_code == 204, r.text
    assert c.get("/auth/me").status_code == 200
    assert_json_error(other.get("/auth/me"), 401, "unauthorized")
    # The admin sets it: every session of hers is revoked.
    admin.run("user", "passwd", name, "--password-stdin", input="uma-password-3\n")
    assert_json_error(c.get("/auth/me"), 401, "unauthorized")
    t3 = login_token(world.dep.url, name, "uma-password-3")
    # The last enabled administrator cannot be disabled or deleted.
    api = admin_api(world)
    assert_json_error(api.post("/users/admin/disable"), 409, "conflict")
    assert_json_error(api.delete("/users/admin"), 409, "conflict")
    admin.run("user", "delete", name, "--yes")
    assert_json_error(world.client(t3).get("/auth/me"), 401, "unauthorized")
    assert name not in [u["name"] for u in admin.json("user", "list")]
    audit = api.get("/audit", params={"limit": 1000}).json()
    actions = {e["action"] for e in audit if e["target"] == name}
    assert {"user.disable", "user.enable", "user.passwd", "user.delete"} <= actions


def device_probes(ep: Endpoint, blob: str) -> list[tuple[str, str, Any]]:
    return [
        ("GET", f"/cvds/{ep.cvd_id}", None),
        ("GET", f"/cvds/{ep.cvd_id}/snapshots", None),
        ("GET", f"/cvds/{ep.cvd_id}/snapshots/latest/browse", None),
        ("GET", f"/cvds/{ep.cvd_id}/snapshots/{ep.snapshot}/file?path={ep.secret_path}", None),
        ("POST", "/blobs/read", {"ids": [blob]}),
        ("POST", "/agent/config", {"state": "idle"}),
        ("GET", "/agent/work", None),
        ("POST", "/agent/missing", {"ids": [blob]}),
        ("POST", "/agent/commit", {"root": blob, "files": 0, "bytes": 0}),
    ]


def synced_endpoint(w: World, token: str, host: str, user: str) -> Endpoint:
    ep = enroll(w.admin, w.dep.url, token, w.tmp, host, user)
    out = ep.agent.json("agent", "run", "--once", "--state", str(ep.state))
    assert out["synced"] and out["cvd_id"], out
    ep.cvd_id = out["cvd_id"]
    ep.snapshot = admin_api(w).get(f"/cvds/{ep.cvd_id}/snapshots").json()[-1]["id"]
    return ep


def secret_blob(ep: Endpoint) -> str:
    """The id of the endpoint's private file: one chunk, named with the id key."""
    key = bytes.fromhex(json.loads((ep.state / "agent.json").read_text())["id_key"])
    return blob_id(key, ep.secret).hex()


@pytest.mark.parametrize("how", ["archive", "revoke"])
def test_archived_or_revoked_device_reads_nothing(world: World, how: str) -> None:
    api = admin_api(world)
    token = api.post("/tokens", json={"expires_in": 3600, "policy": "std"}).json()["token"]
    ep = synced_endpoint(world, token, f"desk-{how}", "gina")
    blob = secret_blob(ep)
    c = world.client(ep.credential)
    # Control: before, every probe reaches its own CVD.
    assert c.get(f"/cvds/{ep.cvd_id}/snapshots").status_code == 200
    r = c.post("/blobs/read", json={"ids": [blob]})
    assert r.status_code == 200 and msgpack.unpackb(r.content) == [ep.secret]
    if how == "archive":
        world.admin.run("cvd", "archive", ep.cvd_id)
    else:
        out = world.admin.run("device", "revoke", ep.host).stdout
        assert "revoked" in out
    state = "archived" if how == "archive" else "revoked"
    for method, path, body in device_probes(ep, blob):
        r = c.request(method, path, json=body) if body is not None else c.request(method, path)
        doc = assert_json_error(r, (401, 403))
        assert f"device {ep.host} is {state}" in doc["message"], (path, doc)
    p = ep.agent.run("agent", "run", "--once", "--state", str(ep.state), ok=False)
    assert p.returncode != 0 and state in p.stderr
    # The CVD keeps its snapshots for the admins.
    assert api.get(f"/cvds/{ep.cvd_id}/snapshots").json()[-1]["id"] == ep.snapshot
    devices = {d["id"]: d for d in world.admin.json("device", "list")}
    assert devices[ep.device_id]["status"] == state
    audit = api.get("/audit", params={"limit": 1000}).json()
    if how == "archive":
        [e] = [e for e in audit if e["action"] == "cvd.archive" and e["target"] == ep.cvd_id]
        assert e["detail"]["credential_revoked"] is True
    else:
        assert any(e["action"] == "device.revoke" and e["target"] == ep.device_id for e in audit)


# --- the content oracle (review finding 7) ---------------------------------------------------


def test_devices_cannot_confirm_another_endpoints_file_content(world: World) -> None:
    """The review's reproduction: a pending device and an active device of another endpoint
    guess the content of A's small private file (one chunk) and try to confirm it."""
    a = world.a
    key = bytes.fromhex(json.loads((a.state / "agent.json").read_text())["id_key"])
    right = blob_id(key, a.secret)
    wrong = blob_id(key, a.secret.replace(b"private", b"public!"))
    api = admin_api(world)

    # A pending device gets no id key, and reaches nothing but its enrollment status.
    r = enroll_raw(world, world.enroll_token, "desk-snoop")
    assert r.status_code == 201 and r.json()["status"] == "pending"
    assert r.json()["chunking"]["id_key"] == ""
    pending = world.client(r.json()["credential"])
    assert pending.post("/agent/config", json={"state": "idle"}).json()["chunking"] is None
    assert pending.get("/agent/work").json() == []
    for guess in (right, wrong):
        for path in ("/agent/missing", "/blobs/read"):
            doc = assert_json_error(pending.post(path, json={"ids": [guess.hex()]}), 403)
            assert "pending" in doc["message"]

    # An active device of another endpoint: its answers are the same for a right and a wrong guess.
    token = api.post("/tokens", json={"expires_in": 3600, "policy": "std"}).json()["token"]
    r = enroll_raw(world, token, "desk-mallory")
    assert r.status_code == 201 and r.json()["status"] == "active"
    assert r.json()["chunking"]["id_key"] == key.hex()
    m = world.client(r.json()["credential"])
    r = m.post("/agent/missing", json={"ids": [right.hex(), wrong.hex()]})
    assert r.status_code == 200 and r.json()["missing"] == [right.hex(), wrong.hex()]
    for guess in (right, wrong):
        doc = assert_json_error(m.post("/blobs/read", json={"ids": [guess.hex()]}), 403)
        assert "not in this device's snapshots" in doc["message"]
    # Committing a tree that names the guess, to read it back, is refused the same way.
    answers = []
    for guess in (right, wrong):
        t = tree([file_entry(b"loot.txt", [guess], size=len(a.secret))])
        tid = blob_id(key, t)
        flag, payload = compress(t)
        body = msgpack.packb(
            {"v": 1, "blobs": [[int(BlobKind.TREE), tid, flag, payload, len(t)]]},
            use_bin_type=True,
        )
        up = m.post("/agent/bundles", content=body, headers={"Content-Type": MEDIA_TYPE})
        assert up.status_code == 200, up.text
        r = m.post("/agent/commit", json={"root": tid.hex(), "files": 1, "bytes": len(a.secret)})
        doc = assert_json_error(r, 422, "missing_data")
        answers.append(doc["message"].replace(guess.hex()[:16], "ID"))
    assert answers[0] == answers[1] and "does not hold for this CVD" in answers[0]
    cvd = next(x for x in api.get("/cvds").json() if x["hostname"] == "desk-mallory")
    assert cvd["snapshots"] == 0

    # Uploading each guess as content gives the same answer whether the store held it.
    uploads = []
    for guess, content in ((right, a.secret), (wrong, a.secret.replace(b"private", b"public!"))):
        flag, payload = compress(content)
        body = msgpack.packb(
            {"v": 1, "blobs": [[int(BlobKind.DATA), guess, flag, payload, len(content)]]},
            use_bin_type=True,
        )
        up = m.post("/agent/bundles", content=body, headers={"Content-Type": MEDIA_TYPE})
        uploads.append((up.status_code, up.text))
    assert uploads[0] == uploads[1] == (200, '{"new":1}')

    # Control: A itself is told its chunk is stored, and reads it.
    ca = world.client(a.credential)
    assert ca.post("/agent/missing", json={"ids": [right.hex()]}).json()["missing"] == []
    r = ca.post("/blobs/read", json={"ids": [right.hex()]})
    assert r.status_code == 200 and msgpack.unpackb(r.content) == [a.secret]
    # A device that really holds the same content uploads it: the store keeps one copy,
    # and from then on it is that device's too.
    flag, payload = compress(a.secret)
    body = msgpack.packb(
        {"v": 1, "blobs": [[int(BlobKind.DATA), right, flag, payload, len(a.secret)]]},
        use_bin_type=True,
    )
    up = m.post("/agent/bundles", content=body, headers={"Content-Type": MEDIA_TYPE})
    assert up.status_code == 200 and up.json() == {"new": 0}  # its own since the upload above
    assert m.post("/agent/missing", json={"ids": [right.hex()]}).json()["missing"] == []
    r = m.post("/blobs/read", json={"ids": [right.hex()]})
    assert r.status_code == 200 and msgpack.unpackb(r.content) == [a.secret]


def test_an_upload_under_a_guessed_id_proves_nothing(world: World) -> None:
    """An upload proves the device holds a blob only when its content hashes to the id,
    also when the store holds that id already (for another CVD): a device that sends a
    guessed id with other bytes must not come to own, read or commit A's chunk."""
    a = world.a
    key = bytes.fromhex(json.loads((a.state / "agent.json").read_text())["id_key"])
    right = blob_id(key, a.secret)
    api = admin_api(world)
    token = api.post("/tokens", json={"expires_in": 3600, "policy": "std"}).json()["token"]
    r = enroll_raw(world, token, "desk-eve")
    assert r.status_code == 201 and r.json()["status"] == "active"
    m = world.client(r.json()["credential"])
    decoy = b"not the content of that chunk" * 3
    for fake_length in (len(decoy), len(a.secret)):
        flag, payload = compress(decoy)
        body = msgpack.packb(
            {"v": 1, "blobs": [[int(BlobKind.DATA), right, flag, payload, fake_length]]},
            use_bin_type=True,
        )
        up = m.post("/agent/bundles", content=body, headers={"Content-Type": MEDIA_TYPE})
        assert up.status_code == 422, up.text
        assert "does not match its id" in up.text or "index says" in up.text
    doc = assert_json_error(m.post("/blobs/read", json={"ids": [right.hex()]}), 403)
    assert "not in this device's snapshots" in doc["message"]
    # A itself still reads its chunk, unchanged.
    r = world.client(a.credential).post("/blobs/read", json={"ids": [right.hex()]})
    assert r.status_code == 200 and msgpack.unpackb(r.content) == [a.secret]


def test_an_upload_costs_the_same_whether_another_endpoint_held_the_content(world: World) -> None:
    """A bundle whose blob the store holds for another CVD writes it all the same (a
    surplus copy, freed by the gc): the work, the answer's time and the store's size
    (``/status`` shows it to any reader) are those of a blob nobody held. Sizes, not
    times, are compared: the bytes added for a right guess of A's content equal those
    for a wrong one of the same length."""
    api = admin_api(world)

    def device(host: str) -> tuple[httpx.Client, bytes]:
        token = api.post("/tokens", json={"expires_in": 3600, "policy": "std"}).json()["token"]
        r = enroll_raw(world, token, host)
        assert r.status_code == 201, r.text
        return world.client(r.json()["credential"]), bytes.fromhex(r.json()["chunking"]["id_key"])

    victim, key = device("desk-victim")
    m, _ = device("desk-timer")
    secret = b"the victim's own notes: " + secrets.token_bytes(48)
    wrong = bytes(b ^ 0x55 for b in secret)  # same length, not the victim's

    def grows(content: bytes, new: int, by: httpx.Client | None = None) -> int:
        before = api.get("/status").json()["usage"]["pack_bytes"]
        flag, payload = compress(content)
        row = [int(BlobKind.DATA), blob_id(key, content), flag, payload, len(content)]
        body = msgpack.packb({"v": 1, "blobs": [row]}, use_bin_type=True)
        up = (by or m).post("/agent/bundles", content=body, headers={"Content-Type": MEDIA_TYPE})
        assert up.status_code == 200 and up.json() == {"new": new}, up.text
        return int(api.get("/status").json()["usage"]["pack_bytes"]) - int(before)

    assert grows(secret, 1, by=victim) > 0
    assert len(compress(secret)[1]) == len(compress(wrong)[1])
    assert grows(secret, 1) == grows(wrong, 1) > 0
    assert grows(secret, 0) == 0  # its own blob sent again: nothing written


# --- hostnames (review finding 18, the server's half) -----------------------------------------


@pytest.mark.parametrize(
    "hostname", ["\x1b]0;owned\x07", "desk\x1b[2J", "desk a", "desk\nb", "-desk", "désk"]
)
def test_hostname_is_restricted_to_a_safe_set(world: World, hostname: str) -> None:
    api = admin_api(world)
    before = {d["id"] for d in api.get("/devices").json()}
    doc = assert_json_error(enroll_raw(world, world.enroll_token, hostname), 400, "bad_request")
    assert "hostname" in doc["message"] and "\x1b" not in doc["message"]
    assert {d["id"] for d in api.get("/devices").json()} == before


def test_a_cvd_from_before_blob_ownership_is_indexed_on_first_use(world: World) -> None:
    """A CVD made before revision 0005 has no ownership rows: its snapshots are walked once."""
    b = world.b
    blob = secret_blob(b)
    engine = make_engine(f"sqlite:///{world.dep.servers[0].data / 'lamina.db'}")
    try:
        with write_tx(engine) as c:
            c.execute(delete(cvd_blobs).where(cvd_blobs.c.cvd_id == b.cvd_id))
            c.execute(update(cvds).where(cvds.c.id == b.cvd_id).values(blobs_indexed=False))
        cb = world.client(b.credential)
        assert cb.post("/agent/missing", json={"ids": [blob]}).json()["missing"] == []
        r = cb.post("/blobs/read", json={"ids": [blob]})
        assert r.status_code == 200 and msgpack.unpackb(r.content) == [b.secret]
        with engine.connect() as c:
            assert c.execute(select(cvds.c.blobs_indexed).where(cvds.c.id == b.cvd_id)).scalar()
            assert bytes.fromhex(blob) in {
                bytes(x)
                for x in c.execute(
                    select(cvd_blobs.c.blob_id).where(cvd_blobs.c.cvd_id == b.cvd_id)
                ).scalars()
            }
    finally:
        engine.dispose()
