"""Who reaches which flex route: the authz matrix of issue 10.

Every flex and group route, for every role: refused (403) or let through (anything but
401/403). A flex-user reaches only ``/flex/key`` and ``/flex/my/*``, and there only its
own instances (another user's are "not found"). Probes that are let through name things
that do not exist, so no probe changes anything.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flex.server_live import TIMEOUT, PatientLive
from tests.server.conftest import Live

ADMIN, HD, RO, FLEX = "administrator", "helpdesk", "readonly", "flex-user"
READ = {ADMIN, HD, RO}
USE = {ADMIN, FLEX}

#: (method, path, body, the roles let through). ``{i}`` is bob's instance.
MATRIX: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/flex/images/upload?name=nope", None, {ADMIN}),
    ("POST", "/flex/images/nope/url", {"url": "ftp://x/y", "sha256": "0" * 64}, {ADMIN}),
    ("GET", "/flex/images", None, READ),
    ("GET", "/flex/images/nope", None, READ),
    ("DELETE", "/flex/images/nope", None, {ADMIN}),
    ("POST", "/flex/policies", {"name": "p", "restrictions": {"usb": "bad"}}, {ADMIN}),
    ("GET", "/flex/policies", None, READ),
    ("GET", "/flex/policies/nope", None, READ),
    ("PUT", "/flex/policies/nope", {}, {ADMIN}),
    ("DELETE", "/flex/policies/nope", None, {ADMIN}),
    ("POST", "/flex/entitlements", {"name": "e", "image": "nope", "policy": "std"}, {ADMIN}),
    ("GET", "/flex/entitlements", None, READ),
    ("GET", "/flex/entitlements/nope", None, READ),
    ("PUT", "/flex/entitlements/nope", {}, {ADMIN}),
    ("DELETE", "/flex/entitlements/nope", None, {ADMIN}),
    ("GET", "/flex/instances", None, READ),
    ("GET", "/flex/instances/nope", None, READ),
    ("POST", "/flex/instances/nope/lock", {}, {ADMIN, HD}),
    ("POST", "/flex/instances/nope/unlock", {}, {ADMIN, HD}),
    ("POST", "/flex/instances/nope/revoke", {}, {ADMIN, HD}),
    ("PUT", "/flex/instances/nope/policy", {"policy": None}, {ADMIN, HD}),
    ("POST", "/groups", {"name": "g", "members": ["nope"]}, {ADMIN}),
    ("GET", "/groups", None, READ),
    ("GET", "/groups/nope", None, READ),
    ("POST", "/groups/nope/members", {"members": ["x"]}, {ADMIN}),
    ("POST", "/groups/nope/members/remove", {"members": ["x"]}, {ADMIN}),
    ("DELETE", "/groups/nope", None, {ADMIN}),
    ("GET", "/flex/key", None, USE),
    ("GET", "/flex/my/entitlements", None, USE),
    ("GET", "/flex/my/instances", None, USE),
    ("POST", "/flex/my/instances", {"entitlement": "nope", "client": "x"}, USE),
    ("GET", "/flex/my/instances/nope/manifest", None, USE),
    ("GET", "/flex/my/instances/nope/pieces/0", None, USE),
    ("POST", "/flex/my/instances/nope/checkin", {"client_time": "2026-01-01T00:00:00Z"}, USE),
]
#: Routes on one instance of bob's: eve (a flex-user too) gets 404, bob gets through.
BOBS = [
    ("GET", "/flex/my/instances/{i}/manifest", None),
    ("GET", "/flex/my/instances/{i}/pieces/0", None),
    ("POST", "/flex/my/instances/{i}/checkin", {"client_time": "2026-01-01T00:00:00Z"}),
]


def test_every_flex_route_is_in_the_matrix() -> None:
    from fastapi.routing import APIRoute

    from lamina.server.api import flex, flex_my, groups

    routers = (flex.router, flex_my.router, groups.router)
    routes = {
        (m, r.path) for x in routers for r in x.routes if isinstance(r, APIRoute) for m in r.methods
    }
    probed = {(m, p.split("?")[0].replace("nope", "X")) for m, p, _, _ in MATRIX}
    for m, path in routes:
        shape = path
        for part in ("{ref}", "{name}", "{n}"):
            shape = shape.replace(part, "X")
        shape = shape.replace("/pieces/X", "/pieces/0")
        assert (m, shape) in probed, f"{m} {path} has no row in MATRIX"


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_flex_authz_matrix(live: Live, tmp_path: Path) -> None:
    live = PatientLive(live.url, live.data, live.clients)
    admin = live.login()
    clients = {ADMIN: admin, HD: live.user("hd", HD), RO: live.user("ro", RO)}
    clients[FLEX] = bob = live.user("bob", FLEX)
    eve = live.user("eve", FLEX)
    # bob's instance of a small image
    disk = tmp_path / "d.raw"
    disk.write_bytes(random.Random(1).randbytes(256 * 1024))
    with open(disk, "rb") as f:
        assert (
            admin.post("/flex/images/upload", params={"name": "img"}, content=f).status_code == 201
        )
    assert admin.post("/flex/policies", json={"name": "std"}).status_code == 201
    r = admin.post(
        "/flex/entitlements",
        json={"name": "e", "image": "img", "policy": "std", "users": ["bob", "eve"]},
    )
    assert r.status_code == 201, r.text
    r = bob.post("/flex/my/instances", json={"entitlement": "e", "client": "laptop"})
    assert r.status_code == 201, r.text
    iid = r.json()["instance"]

    wrong = []
    for method, path, body, allowed in MATRIX:
        for role, c in clients.items():
            got = c.request(method, path, json=body).status_code
            ok = got not in (401, 403) if role in allowed else got == 403
            if not ok:
                wrong.append(f"{role}: {method} {path} -> {got}")
    for method, path, body in BOBS:
        p = path.format(i=iid)
        if (got := eve.request(method, p, json=body).status_code) != 404:
            wrong.append(f"eve: {method} {p} -> {got}")
        if (got := bob.request(method, p, json=body).status_code) != 200:
            wrong.append(f"bob: {method} {p} -> {got}")
    with httpx.Client(base_url=live.url + "/api/v1", timeout=TIMEOUT) as anon:
        for method, path, body, _ in MATRIX:
            if (got := anon.request(method, path, json=body).status_code) != 401:
                wrong.append(f"anonymous: {method} {path} -> {got}")
    assert not wrong, "\n".join(wrong)
    # A flex-user is made with `user create --role flex-user` and holds flex.use only.
    assert bob.get("/auth/me").json()["permissions"] == ["flex.use"]
