"""Tokens, users, task cancel and device revoke from the console: each calls the API's
service, the roles hold as in the API (read-only and help desk refused), and what the
service refuses (the last administrator) is shown as its message."""

from __future__ import annotations

import re

import httpx
import pytest
from tests.console.conftest import Console, api, enroll
from tests.e2e.conftest import ADMIN_PASSWORD, ServerProc

PASSWORD = "password-123"


@pytest.fixture(scope="module")
def fleet(shared_server: ServerProc) -> dict[str, str]:
    """Two centralized CVDs (desk-a, desk-b), a read-only and a help desk user."""
    url = shared_server.url
    a = api(url)
    a.post("/policies", json={"name": "std"}).raise_for_status()
    token = a.post("/tokens", json={"expires_in": 3600, "uses": 2}).json()["token"]
    out = {}
    for host in ("desk-a", "desk-b"):
        out[f"{host}-credential"] = enroll(url, token, host)["credential"]
        out[host] = a.post(f"/devices/{host}/centralize", json={"policy": "std"}).json()["id"]
    for name, role in (("reader", "readonly"), ("helper", "helpdesk")):
        a.post("/users", json={"name": name, "password": PASSWORD, "role": role}).raise_for_status()
    return out


def _agent_config(url: str, credential: str) -> int:
    r = httpx.post(
        url + "/api/v1/agent/config",
        json={"state": "idle"},
        headers={"Authorization": f"Bearer {credential}"},
    )
    return r.status_code


def _revoke_ids(html: str) -> set[str]:
    return set(re.findall(r'action="/tokens/([^/"]+)/revoke"', html))


def test_the_tokens_page_lists_every_token_and_revokes_them(
    shared_server: ServerProc, fleet: dict[str, str]
) -> None:
    url = shared_server.url
    admin = Console(url).login()
    admin.get("/tokens")
    page = admin.post("/tokens", {"hours": "1", "uses": "3"}).text
    assert "lets 3 devices enroll" in page
    m = re.search(r'id="new-token" readonly value="([^"]+)"', page)
    assert m, page
    enroll_token = m.group(1)
    tokens = api(url).get("/tokens").json()
    (mine,) = [t for t in tokens if t["kind"] == "enrollment" and t["max_uses"] == 3]
    # A help desk session made elsewhere: the administrator sees it, and revokes it.
    helpers = lambda: {  # noqa: E731
        t["id"]: t for t in api(url).get("/tokens").json() if t["owner"] == "helper"
    }
    before = helpers()
    helper = api(url, "helper", PASSWORD)
    assert helper.get("/cvds").status_code == 200
    (helper_session,) = [t for i, t in helpers().items() if i not in before]
    html = admin.get("/tokens").text
    assert "0 of 3" in html and "(this session)" in html and ">helper<" in html
    assert {mine["id"], helper_session["id"]} <= _revoke_ids(html)

    # Read-only: only their own session, no revoke button, and revoking others' is refused.
    reader = Console(url).login("reader", PASSWORD)
    html = reader.get("/tokens").text
    # (a user may revoke their own other sessions, as through the API; nobody else's)
    own = {t["id"] for t in api(url).get("/tokens").json() if t["owner"] == "reader"}
    assert _revoke_ids(html) <= own and "(this session)" in html
    assert ">helper<" not in html and "Create token" not in html
    for tid in (mine["id"], helper_session["id"]):
        r = reader.post(f"/tokens/{tid}/revoke")
        assert r.status_code == 403, r.text
    assert reader.post("/tokens", {"hours": "1"}).status_code == 403
    assert helper.get("/cvds").status_code == 200

    r = admin.post(f"/tokens/{helper_session['id']}/revoke")
    assert r.status_code == 303 and r.headers["location"] == "/tokens"
    assert helper.get("/cvds").status_code == 401  # stopped working at once
    admin.get("/tokens")
    assert admin.post(f"/tokens/{mine['id']}/revoke").status_code == 303
    refused = httpx.post(
        url + "/api/v1/agent/enroll",
        json={"token": enroll_token, "facts": {"machine_id": "m-late", "hostname": "late-01"}},
    )
    assert refused.status_code == 401 and "revoked" in refused.text
    html = admin.get("/tokens").text
    assert mine["id"] not in _revoke_ids(html) and "revoked" in html
    actions = [e["action"] for e in api(url).get("/audit").json() if e["actor"] == "admin"]
    assert actions.count("token.revoke") == 2


def test_users_are_disabled_enabled_given_a_password_and_deleted(
    shared_server: ServerProc, fleet: dict[str, str]
) -> None:
    url = shared_server.url
    admin = Console(url).login()
    admin.get("/users")
    assert (
        admin.post("/users", {"name": "temp", "password": PASSWORD, "role": "helpdesk"}).status_code
        == 303
    )
    temp = api(url, "temp", PASSWORD)
    assert temp.get("/cvds").status_code == 200
    html = admin.get("/users").text
    for word in ("Disable", "Delete", "Set password"):
        assert f'>{word}<span class="sr">' in html
    assert admin.post("/users/temp/disable").status_code == 303
    assert temp.get("/cvds").status_code == 401
    assert ">Enable<span" in admin.get("/users").text
    assert admin.post("/users/temp/enable").status_code == 303
    temp = api(url, "temp", PASSWORD)
    assert admin.post("/users/temp/password", {"password": "another-pass-9"}).status_code == 303
    assert temp.get("/cvds").status_code == 401  # its sessions end with the old password
    temp = api(url, "temp", "another-pass-9")
    assert admin.post("/users/temp/password", {"password": "short"}).status_code == 400
    confirm = admin.get("/users/temp/delete").text
    assert "The user temp is deleted with every session" in confirm
    assert ">Delete user</button>" in confirm
    assert api(url).get("/users").status_code == 200 and temp.get("/cvds").status_code == 200
    assert admin.post("/users/temp/delete").status_code == 303
    assert temp.get("/cvds").status_code == 401
    assert "temp" not in [u["name"] for u in api(url).get("/users").json()]

    # The last enabled administrator: the service's refusal, shown; nothing changes.
    for what in ("disable", "delete"):
        r = admin.post(f"/users/admin/{what}")
        assert r.status_code == 409, r.text
        assert "it is the last enabled administrator" in r.text
    assert admin.get("/users").status_code == 200  # still logged in, still an administrator

    # Neither help desk nor read-only manage users.
    for name in ("helper", "reader"):
        c = Console(url).login(name, PASSWORD)
        assert c.get("/users").status_code == 403
        assert c.get("/users/admin/delete").status_code == 403
        c.get("/")
        for path, form in (
            ("/users", {"name": "eve", "password": PASSWORD, "role": "administrator"}),
            ("/users/admin/disable", {}),
            ("/users/reader/enable", {}),
            ("/users/admin/delete", {}),
            ("/users/admin/password", {"password": "taken-over-1"}),
        ):
            r = c.post(path, form)
            assert r.status_code == 403, (name, path, r.text[:200])
    users = {u["name"]: u for u in api(url).get("/users").json()}
    assert "eve" not in users and not users["admin"]["disabled"]
    api(url, "admin", ADMIN_PASSWORD)  # the password was not changed


def test_a_queued_task_is_cancelled_from_the_tasks_and_cvd_pages(
    shared_server: ServerProc, fleet: dict[str, str]
) -> None:
    url = shared_server.url
    cvd = fleet["desk-a"]
    admin = Console(url).login()
    admin.get(f"/cvds/{cvd}/confirm/sync")
    r = admin.post(f"/cvds/{cvd}/sync")
    task = r.headers["location"].rsplit("/", 1)[-1]
    cancel = f'action="/tasks/{task}/cancel"'
    for path in ("/tasks", "/tasks/live", f"/cvds/{cvd}", f"/tasks/{task}"):
        assert cancel in admin.get(path).text, path

    reader = Console(url).login("reader", PASSWORD)
    for path in ("/tasks", "/tasks/live", f"/cvds/{cvd}", f"/tasks/{task}"):
        assert "/cancel" not in reader.get(path).text, path
    assert reader.post(f"/tasks/{task}/cancel").status_code == 403
    assert api(url).get(f"/tasks/{task}").json()["state"] == "queued"

    admin.get(f"/cvds/{cvd}")
    r = admin.post(f"/tasks/{task}/cancel")
    assert r.status_code == 303 and r.headers["location"] == f"/tasks/{task}"
    assert api(url).get(f"/tasks/{task}").json()["state"] == "cancelled"
    page = admin.get(f"/tasks/{task}").text
    assert "cancelled by admin" in page and cancel not in page
    again = admin.post(f"/tasks/{task}/cancel")
    assert again.status_code == 409 and "only a queued or waiting" in again.text


def test_a_device_is_revoked_after_its_confirmation_and_archive_says_it_revokes(
    shared_server: ServerProc, fleet: dict[str, str]
) -> None:
    url = shared_server.url
    cvd, credential = fleet["desk-b"], fleet["desk-b-credential"]
    assert _agent_config(url, credential) == 200

    reader = Console(url).login("reader", PASSWORD)
    assert "Revoke device" not in reader.get(f"/cvds/{cvd}").text
    assert reader.get(f"/cvds/{cvd}/confirm/revoke").status_code == 403
    assert reader.post(f"/cvds/{cvd}/revoke").status_code == 403
    assert _agent_config(url, credential) == 200

    helper = Console(url).login("helper", PASSWORD)
    assert ">Revoke device<" in helper.get(f"/cvds/{cvd}").text
    archive = helper.get(f"/cvds/{cvd}/confirm/archive").text
    assert "its credential is revoked" in archive
    confirm = helper.get(f"/cvds/{cvd}/confirm/revoke").text
    assert "The credential of desk-b is revoked" in confirm
    assert ">Revoke device</button>" in confirm
    r = helper.post(f"/cvds/{cvd}/revoke")
    assert r.status_code == 303 and r.headers["location"] == f"/cvds/{cvd}"
    assert _agent_config(url, credential) == 401
    page = helper.get(f"/cvds/{cvd}").text
    assert ">Revoke device<" not in page and ">revoked<" in page
    again = helper.post(f"/cvds/{cvd}/revoke")
    assert again.status_code == 409 and "revoked already" in again.text
    (entry,) = [e for e in api(url).get("/audit").json() if e["action"] == "device.revoke"]
    assert entry["actor"] == "helper"


def _pending(html: str) -> int:
    m = re.search(r'class="count pending"><a [^>]*><span class="n">(\d+)</span>', html)
    assert m, "no pending count on the dashboard"
    return int(m.group(1))


def test_the_dashboard_counts_when_loaded_and_its_refresh_may_reuse_recent_counts(
    shared_server: ServerProc, fleet: dict[str, str]
) -> None:
    """A device that enrolls is counted the next time the dashboard is loaded, however soon
    (an action's redirect lands there); only the page's own refresh may show counts a few
    seconds old, and it says when they were taken."""
    url = shared_server.url
    admin = Console(url).login()
    before = _pending(admin.get("/").text)
    assert _pending(admin.get("/dashboard/live").text) == before  # the refresh, kept counts
    token = api(url).post("/tokens", json={"expires_in": 3600, "uses": 1}).json()["token"]
    enroll(url, token, "desk-new")
    assert _pending(admin.get("/").text) == before + 1


def test_an_administrators_own_password_is_changed_with_the_current_one(
    shared_server: ServerProc,
) -> None:
    """The own row of the users page asks the current password (a session left open must
    not be enough to take the account); the other rows do not."""
    url = shared_server.url
    admin = Console(url).login()
    assert (
        admin.post(
            "/users", {"name": "boss", "password": PASSWORD, "role": "administrator"}
        ).status_code
        == 303
    )
    boss = Console(url).login("boss", PASSWORD)
    html = boss.get("/users").text
    own = re.search(r'action="/users/boss/password".*?</form>', html, re.S)
    other = re.search(r'action="/users/admin/password".*?</form>', html, re.S)
    assert own and 'name="current"' in own.group(0)
    assert other and 'name="current"' not in other.group(0)
    r = boss.post("/users/boss/password", {"password": "taken-over-12"})
    assert r.status_code == 400 and "current password is wrong" in r.text
    r = boss.post("/users/boss/password", {"password": "taken-over-12", "current": "wrong-one-1"})
    assert r.status_code == 400 and "current password is wrong" in r.text
    api(url, "boss", PASSWORD)  # unchanged
    r = boss.post("/users/boss/password", {"password": "boss-new-pass-1", "current": PASSWORD})
    assert r.status_code == 303
    api(url, "boss", "boss-new-pass-1")
    assert admin.post("/users/boss/delete").status_code == 303
