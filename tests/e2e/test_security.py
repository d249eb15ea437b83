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
import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, Deployment, Lamina, _deployment

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
        ],
        (403,),
    )
    assert not wrong, "help desk got through:\n" + "\n".join(wrong)
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
        ],
        (403,),
    )
    assert not wrong, "read-only user got through:\n" + "\n".join(wrong)
    assert fleet_state(world) == before

    cvds = c.get("/cvds")
    assert cvds.status_code == 200 and {a.cvd_id, world.b.cvd_id} <= {x["id"] for x in cvds.json()}
    snaps = c.get(f"/cvds/{a.cvd_id}/snapshots")
    assert snaps.status_code == 200 and a.snapshot in [s["id"] for s in snaps.json()]
    assert c.get(f"/cvds/{a.cvd_id}/snapshots/latest/browse").status_code == 200
    assert c.get("/policies").status_code == 200 and c.get("/devices").status_code == 200


def test_login_is_rate_limited(world: World) -> None:
    name = f"rl-{secrets.token_hex(4)}"
    password = "right-password-1"
    world.admin.run(
        "user", "create", name, "--role", "readonly", "--password-stdin", input=password + "\n"
    )
    url = world.dep.url + API + "/auth/login"
    assert httpx.post(url, json={"user": name, "password": password}).status_code == 200
    for i in range(5):
        r = httpx.post(url, json={"user": name, "password": f"wrong-{i}"})
        assert_json_error(r, 401, "unauthorized")
    r = httpx.post(url, json={"user": name, "password": password})
    doc = assert_json_error(r, 429, "rate_limited")
    assert name in doc["message"]
    # The lock-out is per user name: the admin still logs in.
    assert httpx.post(url, json={"user": "admin", "password": ADMIN_PASSWORD}).status_code == 200
    audit = world.client(world.admin_token).get("/audit").json()
    failed = [e for e in audit if e["action"] == "auth.login_failed" and e["target"] == name]
    assert len(failed) == 5 and all(
        e["actor"] == name and e["detail"].get("client") for e in failed
    )


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
    ("POST", "/agent/config", {"state": "idle"}),
    ("POST", "/agent/missing", {"ids": []}),
    ("POST", "/agent/bundles", None),
    ("POST", "/agent/commit", {"root": "00" * 32, "files": 0, "bytes": 0}),
    ("GET", "/agent/work", None),
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
