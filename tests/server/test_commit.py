"""The agent's commit is one service call: store the snapshot, apply the CVD's retention, update its rows."""

from __future__ import annotations

from tests.server.conftest import Live


def test_a_commit_applies_its_policys_retention_and_records_the_sync(live: Live) -> None:
    admin = live.login()
    keep_one = {"keep_last": 1, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0}
    r = admin.post("/policies", json={"name": "std", "settings": {**keep_one, "keep_monthly": 0}})
    assert r.status_code == 201, r.text
    dev = live.device("desk-c")
    dev.client.post("/agent/config", json={"state": "syncing", "progress": {"files": 5}})
    assert admin.get(f"/cvds/{dev.cvd_id}").json()["progress"] == {"files": 5}
    first = dev.commit_files({b"a": [b"one"]})
    second = dev.commit_files({b"a": [b"two"]})
    snaps = admin.get(f"/cvds/{dev.cvd_id}/snapshots").json()
    assert [s["id"] for s in snaps] == [second]  # the policy keeps one: the first is forgotten
    assert first != second
    cvd = admin.get(f"/cvds/{dev.cvd_id}").json()
    assert cvd["last_sync"] == snaps[0]["time"] and cvd["progress"] == {}
