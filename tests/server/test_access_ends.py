"""What a credential may still do once its issuer's rights end, and what outsiders learn
from answers: enrollment tokens of a disabled or deleted user, CVD names told only to
those who may reach the CVD, one's own password change (administrators' too), a task
that ended, repeated ids in one question. Against a real server (``live``)."""

from __future__ import annotations

import httpx

from lamina.store.blob import BlobKind
from tests.server.conftest import ADMIN_PASSWORD, API, Live


def _enroll(live: Live, token: str, host: str) -> httpx.Response:
    return httpx.post(
        live.url + API + "/agent/enroll",
        json={"token": token, "facts": {"machine_id": host, "hostname": host}},
        timeout=60,
    )


def test_an_enrollment_token_works_only_while_its_issuer_may_enroll(live: Live) -> None:
    admin = live.login()
    assert admin.post("/policies", json={"name": "std"}).status_code == 201
    hd = live.user("hd", "helpdesk")
    r = hd.post("/tokens", json={"expires_in": 366 * 86400, "uses": 100, "policy": "std"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert _enroll(live, token, "desk-1").json()["status"] == "active"

    assert admin.post("/users/hd/disable").status_code == 200
    r = _enroll(live, token, "rogue-1")
    assert r.status_code == 401 and "issuer" in r.text
    assert admin.post("/users/hd/enable").status_code == 200  # enabled again: works again
    assert _enroll(live, token, "desk-2").status_code == 201

    assert admin.delete("/users/hd").status_code == 204
    assert _enroll(live, token, "rogue-2").status_code == 401
    # ... and stays refused when a user of the same name is made again
    live.user("hd", "helpdesk")
    assert _enroll(live, token, "rogue-3").status_code == 401
    rows = [t for t in admin.get("/tokens").json() if t["kind"] == "enrollment"]
    assert [t["state"] for t in rows] == ["revoked"]
    hosts = {d["hostname"] for d in admin.get("/devices").json()}
    assert hosts == {"desk-1", "desk-2"}


def test_whether_a_cvd_exists_is_told_only_to_those_who_may_reach_it(live: Live) -> None:
    live.device("finance-laptop-07")
    outsiders = {"flex user": live.user("fu", "flex-user"), "device": live.device("other").client}
    for who, c in outsiders.items():
        for path in ("/cvds/{}", "/cvds/{}/snapshots", "/cvds/{}/layers"):
            there = c.get(path.format("finance-laptop-07"))
            absent = c.get(path.format("finance-laptop-99"))
            assert there.status_code == absent.status_code == 403, (who, path)
            assert there.json()["message"] == absent.json()["message"], (who, path)
    # those who may reach CVDs still tell one that is not there from one that is
    ro = live.user("ro", "readonly")
    assert ro.get("/cvds/finance-laptop-07").status_code == 200
    assert ro.get("/cvds/finance-laptop-99").status_code == 404


def test_ones_own_password_change_needs_the_current_one_administrators_too(
    live: Live,
) -> None:
    live.user("bob", "readonly")
    admin = live.login()
    script = live.client(admin.post("/auth/tokens", json={"name": "script"}).json()["token"])
    r = script.put("/users/admin/password", json={"password": "attacker-chosen-1"})
    assert r.status_code == 401 and "current password" in r.text
    assert admin.get("/auth/me").status_code == 200  # nothing changed, no session revoked
    r = script.put(
        "/users/admin/password", json={"password": "a-new-one-123", "current": ADMIN_PASSWORD}
    )
    assert r.status_code == 204, r.text
    live.login("admin", "a-new-one-123")
    # another user's password is set by an administrator without theirs
    fresh = live.login("admin", "a-new-one-123")
    assert fresh.put("/users/bob/password", json={"password": "bob-reset-1234"}).status_code == 204
    live.login("bob", "bob-reset-1234")


def test_a_task_that_ended_stays_ended(live: Live) -> None:
    dev = live.device("desk")
    admin = live.login()
    assert admin.post(f"/cvds/{dev.cvd_id}/sync").status_code == 202
    [task] = dev.client.get("/agent/work").json()
    path = f"/agent/tasks/{task['task_id']}"
    assert dev.client.post(path, json={"progress": 100, "state": "done"}).status_code == 200
    # reports on it (reopening it, failing it, progress) are answered with it as it is
    for report in ({"progress": 0, "state": "running"}, {"progress": 0, "state": "failed"}):
        r = dev.client.post(path, json=report)
        assert r.status_code == 200 and r.json()["state"] == "done", r.text
    r = dev.client.post(path, json={"progress": 5, "message": "still at it"})
    assert r.status_code == 200 and r.json()["state"] == "done"
    shown = admin.get(f"/tasks/{task['task_id']}").json()
    assert shown["state"] == "done" and shown["progress"] == 100


def test_missing_takes_each_id_once(live: Live) -> None:
    dev = live.device("desk")
    [held] = dev.upload([(BlobKind.DATA, b"held by this CVD")])
    lacking = bytes(32)
    assert dev.missing([held] * 50 + [lacking] * 50 + [held]) == [lacking.hex()]
