"""The console's session, CSRF, headers, roles and escaping, against a real `lamina server`."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import httpx
import pytest
from tests.console.conftest import Console, api, csrf_of, enroll, record_event
from tests.e2e.conftest import ADMIN_PASSWORD, ServerProc
from tests.e2e.test_policy_tls_service import _self_signed

pytestmark = pytest.mark.e2e
XSS = "<script>alert(1)</script>"


def test_login_sets_a_strict_httponly_session_and_logout_revokes_it(
    shared_server: ServerProc,
) -> None:
    server = shared_server
    c = Console(server.url)
    page = c.get("/")
    assert page.status_code == 200
    assert '<label for="user">User</label>' in page.text
    assert '<label for="password">Password</label>' in page.text
    assert ">Log in</button>" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"

    wrong = c.post("/login", {"user": "admin", "password": "not-it"})
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.text

    c.get("/")
    ok = c.post("/login", {"user": "admin", "password": "admin-password-123"})
    assert ok.status_code == 303
    cookie = next(h for h in ok.headers.get_list("set-cookie") if h.startswith("lamina_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; under TLS the cookie is Secure
    token = c.http.cookies["lamina_session"]
    assert "Dashboard" in c.get("/").text

    c.post("/logout")
    c.http.cookies.set("lamina_session", token)  # the old cookie, replayed
    after = c.get("/")
    assert ">Log in</button>" in after.text and "Dashboard</h1>" not in after.text
    r = api(server.url).get("/audit")
    assert any(e["action"] == "auth.logout" for e in r.json())


def test_a_state_change_without_this_sessions_csrf_token_is_refused(
    shared_server: ServerProc,
) -> None:
    server = shared_server
    c = Console(server.url).login()
    other = Console(server.url).login()
    form = {"name": "csrf-test", "interval": "3600", "keep_last": "3", "include": "/**"}
    assert c.post("/policies", form, csrf=False).status_code == 403
    assert c.http.post("/policies", data={**form, "csrf": other.csrf}).status_code == 403
    assert c.http.post("/policies", data={**form, "csrf": ""}).status_code == 403
    names = lambda: [p["name"] for p in api(server.url).get("/policies").json()]  # noqa: E731
    assert "csrf-test" not in names()  # nothing was created
    assert c.post("/policies", form).status_code == 303
    assert "csrf-test" in names()
    # The login form too carries a token tied to its own cookie.
    fresh = Console(server.url)
    fresh.get("/")
    assert fresh.http.post("/login", data={"user": "admin", "password": "x"}).status_code == 403


@pytest.fixture(scope="module")
def fleet(shared_server: ServerProc) -> dict[str, str]:
    """A policy, a pending device, and a CVD (centralized, no snapshot yet)."""
    server = shared_server
    a = api(server.url)
    a.post("/policies", json={"name": "std"}).raise_for_status()
    token = a.post("/tokens", json={"expires_in": 3600, "uses": 2}).json()["token"]
    pending = enroll(server.url, token, "pending-01")["device_id"]
    enroll(server.url, token, "desk-01")
    cvd = a.post("/devices/desk-01/centralize", json={"policy": "std"}).json()["id"]
    for name, role in (("reader", "readonly"), ("helper", "helpdesk")):
        a.post(
            "/users", json={"name": name, "password": "password-123", "role": role}
        ).raise_for_status()
    policy = a.get("/policies/std").json()["id"]
    record_event(server, "error", "desk-01", "sync failed")
    return {"pending": pending, "cvd": cvd, "policy": policy}


ACTION_WORDS = (
    "Centralize",
    "Reject",
    "Provision",
    "Migrate",
    "Restore system",
    "Migrate OS",
    "Sync now",
    "Assign layers",
    "Archive",
    "Save policy",
    "Create policy",
    "Create token",
    "Capture",
    "Start recording",
    "Cancel recording",
    "Create collection",
    "Acknowledge",
    "Assign layers to a collection",
)


def test_a_readonly_user_sees_no_action_and_every_action_route_refuses_them(
    shared_server: ServerProc, fleet: dict[str, str]
) -> None:
    server = shared_server
    c = Console(server.url).login("reader", "password-123")
    pages = [
        "/",
        "/devices",
        "/devices?state=pending",
        f"/cvds/{fleet['cvd']}",
        "/policies",
        f"/policies/{fleet['policy']}",
        "/layers",
        "/collections",
        "/tasks",
        "/rules",
        "/events",
        "/events?pending=1",
        "/tokens",
    ]
    for path in pages:
        r = c.get(path)
        assert r.status_code == 200, (path, r.text)
        for word in ACTION_WORDS:
            assert f">{word}<" not in r.text, (path, word)
        for form in ("/revoke", "/cancel", "/disable", "/enable", "/delete", "/password"):
            assert f'{form}"' not in r.text, (path, form)
    for path in (
        "/users",
        "/audit",
        f"/cvds/{fleet['cvd']}/confirm/revoke",
        f"/devices/{fleet['pending']}/centralize",
        f"/cvds/{fleet['cvd']}/confirm/sync",
        f"/cvds/{fleet['cvd']}/assign",
        "/layers/assign/collection",
    ):
        assert c.get(path).status_code == 403, path

    cvd, dev = fleet["cvd"], fleet["pending"]
    a = api(server.url)
    admin_token = next(t["id"] for t in a.get("/tokens").json() if t["owner"] == "admin")
    enroll_token = next(t["id"] for t in a.get("/tokens").json() if t["kind"] == "enrollment")
    task = a.post(f"/cvds/{cvd}/sync").json()["id"]
    actions = {
        f"/devices/{dev}/centralize": {"policy": "std"},
        f"/devices/{dev}/reject": {},
        f"/cvds/{cvd}/sync": {},
        f"/cvds/{cvd}/restore": {"snapshot": "latest"},
        f"/cvds/{cvd}/revert": {"snapshot": "latest"},
        f"/cvds/{cvd}/enforce": {},
        f"/cvds/{cvd}/archive": {},
        f"/cvds/{cvd}/assign/preview": {"base": "x"},
        f"/cvds/{cvd}/assign": {"base": "x"},
        "/policies": {"name": "p2"},
        f"/policies/{fleet['policy']}": {"interval": "60", "keep_last": "1"},
        "/collections": {"name": "c1"},
        "/layers/capture": {"cvd": cvd, "name": "l1"},
        "/layers/record/start": {"cvd": cvd},
        "/layers/record/finalize": {"cvd": cvd, "name": "l1"},
        "/layers/record/cancel": {"cvd": cvd},
        "/users": {"name": "eve", "password": "password-123", "role": "administrator"},
        "/users/admin/disable": {},
        "/users/admin/enable": {},
        "/users/admin/delete": {},
        "/users/admin/password": {"password": "taken-over-1"},
        "/tokens": {"hours": "1"},
        f"/tokens/{admin_token}/revoke": {},
        f"/tokens/{enroll_token}/revoke": {},
        f"/tasks/{task}/cancel": {},
        f"/cvds/{cvd}/revoke": {},
        "/events/1/acknowledge": {},
        "/layers/assign/collection/preview": {"collection": "none", "base": "x"},
        "/layers/assign/collection": {"collection": "none", "base": "x"},
    }
    for path, form in actions.items():
        r = c.post(path, form)
        assert r.status_code == 403, (path, r.status_code, r.text[:300])
        assert "may not do this" in r.text
    assert [t for t in a.get("/tasks").json() if t["created_by"] == "reader"] == []
    assert a.get(f"/tasks/{task}").json()["state"] == "queued"
    assert {t["id"]: t["state"] for t in a.get("/tokens").json()}[enroll_token] != "revoked"
    assert dev in [d["id"] for d in a.get("/devices?pending=true").json()]
    assert a.get(f"/cvds/{cvd}").json()["state"] == "active"
    assert a.get("/policies/std").json()["version"] == 1
    assert "eve" not in [u["name"] for u in a.get("/users").json()]
    assert not [
        e
        for e in a.get("/audit").json()
        if e["actor"] == "reader" and "." in e["action"] and not e["action"].startswith("auth.")
    ]


def test_help_desk_operates_cvds_but_cannot_edit_policies(
    shared_server: ServerProc, fleet: dict[str, str]
) -> None:
    server = shared_server
    c = Console(server.url).login("helper", "password-123")
    page = c.get(f"/cvds/{fleet['cvd']}").text
    assert ">Sync now<" in page and ">Archive<" in page and ">Assign layers<" not in page
    policy = c.get(f"/policies/{fleet['policy']}").text
    assert ">Save policy<" not in policy
    r = c.post(f"/policies/{fleet['policy']}", {"interval": "60", "keep_last": "1"})
    assert r.status_code == 403 and "policy.write" in r.text
    assert c.post("/policies", {"name": "mine"}).status_code == 403
    assert api(server.url).get("/policies/std").json()["version"] == 1
    c.get(f"/cvds/{fleet['cvd']}/confirm/sync")
    r = c.post(f"/cvds/{fleet['cvd']}/sync")
    assert r.status_code == 303 and r.headers["location"].startswith("/tasks/")
    # Help desk archives a CVD of its own, after reading what that does.
    a = api(server.url)
    token = a.post("/tokens", json={"expires_in": 3600}).json()["token"]
    enroll(server.url, token, "leaving-01")
    cvd = a.post("/devices/leaving-01/centralize", json={"policy": "std"}).json()["id"]
    confirm = c.get(f"/cvds/{cvd}/confirm/archive").text
    assert "leaving-01 is detached from leaving-01" in confirm and ">Archive</button>" in confirm
    r = c.post(f"/cvds/{cvd}/archive")
    assert r.status_code == 303 and r.headers["location"] == f"/cvds/{cvd}"
    assert a.get(f"/cvds/{cvd}").json()["state"] == "archived"
    assert ">Sync now<" not in c.get(f"/cvds/{cvd}").text  # nothing to act on any more


def test_user_text_is_escaped_in_hostnames_and_the_audit_log(
    shared_server: ServerProc, fleet: dict[str, str]
) -> None:
    server = shared_server
    token = api(server.url).post("/tokens", json={"expires_in": 3600}).json()["token"]
    # The server refuses markup in a hostname (and loses nothing: the token is not used up);
    # the device model is free text it still stores, shown on the device list and in the
    # enrollment's audit entry.
    refused = httpx.post(
        server.url + "/api/v1/agent/enroll",
        json={"token": token, "facts": {"machine_id": "m-xss", "hostname": XSS}},
    )
    assert refused.status_code == 400 and "hostname" in refused.text
    enroll(server.url, token, "xss-01", model=XSS)
    c = Console(server.url).login()
    for path in ("/devices", f"/devices?q={XSS}", "/audit", "/devices?state=pending"):
        html = c.get(path).text
        assert XSS not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
    assert len(re.findall(r"<script", c.get("/audit").text)) == 2  # htmx and console.js only


def test_under_tls_the_session_cookie_is_secure(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "console")
    server = ServerProc(tmp_path / "srv", [], tls=(cert, key)).start()
    try:
        # Closed before the server stops: a TLS server waits for an open connection's TLS
        # shutdown until its graceful-shutdown timeout (5 s).
        with httpx.Client(
            base_url=server.url,
            verify=ssl.create_default_context(cafile=str(cert)),
            follow_redirects=False,
            timeout=60,  # a fresh server's first page on a loaded machine
        ) as http:
            page = http.get("/")
            r = http.post(
                "/login",
                data={"user": "admin", "password": ADMIN_PASSWORD, "csrf": csrf_of(page.text)},
            )
        assert r.status_code == 303
        cookie = next(
            h for h in r.headers.get_list("set-cookie") if h.startswith("lamina_session=")
        )
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    finally:
        server.stop()


def test_bad_form_input_is_a_clear_error_page_and_changes_nothing(
    shared_server: ServerProc,
) -> None:
    c = Console(shared_server.url).login()
    c.get("/policies")
    too_often = c.post("/policies", {"name": "fast", "interval": "10", "keep_last": "3"})
    assert too_often.status_code == 400
    assert "interval: Input should be greater than or equal to 60" in too_often.text
    not_a_number = c.post("/policies", {"name": "fast", "interval": "soon", "keep_last": "3"})
    assert not_a_number.status_code == 400 and "interval" in not_a_number.text
    bad_name = c.post("/policies", {"name": "a b", "interval": "3600", "keep_last": "3"})
    assert bad_name.status_code == 400 and "name" in bad_name.text
    assert c.get("/devices?state=sideways").status_code == 400
    assert c.get("/devices?page=nope").status_code == 400
    names = [p["name"] for p in api(shared_server.url).get("/policies").json()]
    assert "fast" not in names and "a b" not in names


def test_the_login_form_keeps_the_apis_rate_limit(shared_server: ServerProc) -> None:
    c = Console(shared_server.url)
    for _ in range(5):
        c.get("/")
        assert c.post("/login", {"user": "mallory", "password": "guess"}).status_code == 401
    c.get("/")
    r = c.post("/login", {"user": "mallory", "password": "guess"})
    assert r.status_code == 429 and "too many failed logins" in r.text
    assert "lamina_session" not in c.http.cookies
