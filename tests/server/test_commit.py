"""The agent's commit is one service call: store the snapshot, apply the CVD's retention, update its rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import Pool

from lamina.store.blob import BlobKind
from lamina.tree.model import Entry, encode_tree
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


def test_a_commit_finds_its_owned_chunks_stored_in_one_lookup(live: Live) -> None:
    """At a commit, the chunks the CVD owns and the store holds as data (most of them) are
    found by one statement (its ownership rows joined to the catalog's), not one asking
    ownership and another locating them (f384b63); the commit still lands. (Chunks its
    bundles stored since its last commit are asked nothing: ``test_recent_uploads``; here
    they were committed once, and are named again under other names.)"""
    dev = live.device("desk-j")
    datas = [b"one", b"two", b"three"]
    ids = dev.upload([(BlobKind.DATA, d) for d in datas])

    def folder(prefix: bytes) -> bytes:
        entries = [
            Entry(name=prefix + b"%d" % k, type="file", size=len(d), content=[i])
            for k, (d, i) in enumerate(zip(datas, ids, strict=True))
        ]
        [root] = dev.upload([(BlobKind.TREE, encode_tree(entries))])
        return root

    first = dev.client.post(
        "/agent/commit", json={"root": folder(b"f").hex(), "files": 3, "bytes": 11}
    )
    assert first.status_code == 200, first.text
    root = folder(b"renamed-")
    seen: list[str] = []

    def trace(dbapi_conn: Any, *_: Any) -> None:  # every connection the commit takes
        dbapi_conn.set_trace_callback(seen.append)

    event.listen(Pool, "checkout", trace)
    try:
        r = dev.client.post("/agent/commit", json={"root": root.hex(), "files": 3, "bytes": 11})
    finally:
        event.remove(Pool, "checkout", trace)
    assert r.status_code == 200, r.text
    hexes = [i.hex() for i in ids]
    naming = [s for s in seen if any(h in s.lower() for h in hexes)]
    assert len(naming) == 1, naming
    assert "JOIN cvd_blobs" in naming[0] and all(h in naming[0].lower() for h in hexes)
