"""A layer version made while a gc runs names nothing the gc's sweep then deletes.

A base layer's trees are made from the reference snapshot's (the machine's identity
left out): new trees, written before the version row that names them. A gc that marked
and condemned between the two, and swept after the row went in, deleted them, and the
layer could never be applied again. The row now goes in with the store's gc epoch
locked, after a rescue of what the tree names when the epoch moved
(``layer_versions.insert_held``), as a snapshot's commit does."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from lamina.config import ServerSettings
from lamina.db.roots import all_roots, owners
from lamina.server.app import open_context
from lamina.server.services import layer_assign, layer_capture
from lamina.store import gc
from lamina.store.blob import BlobKind
from lamina.store.check import check
from lamina.store.repository import Store
from lamina.tree.backup import walk_blobs
from lamina.tree.model import Entry, encode_tree, references
from tests.server.conftest import ADMIN_PASSWORD, Device, Live, Shape, run_gc


def _reference_device(live: Live, settings: dict[str, int] | None = None) -> Device:
    """A device centralized as a reference (its CVD may be captured), with a snapshot of
    a small system: its identity under etc/, a program under usr/bin/."""
    admin = live.login()
    policy = {"name": "std", **({"settings": settings} if settings else {})}
    assert admin.post("/policies", json=policy).status_code == 201
    r = admin.post("/tokens", json={"expires_in": 3600, "policy": "std", "reference": True})
    assert r.status_code == 201, r.text
    doc = httpx.post(
        live.url + "/api/v1/agent/enroll",
        json={"token": r.json()["token"], "facts": {"machine_id": "ref-1", "hostname": "ref-1"}},
        timeout=60,
    ).json()
    client = live.client(doc["credential"])
    cvd_id = client.post("/agent/config", json={"state": "idle"}).json()["cvd_id"]
    dev = Device(client, bytes.fromhex(doc["chunking"]["id_key"]), cvd_id)
    tool = b"#!/bin/sh\necho the tool\n" + os.urandom(64)
    ids = dev.upload(
        [
            (BlobKind.DATA, b"ref-1\n"),
            (BlobKind.DATA, os.urandom(16).hex().encode()),
            (BlobKind.DATA, tool),
        ]
    )
    etc = encode_tree(
        [
            Entry(b"hostname", "file", size=6, content=[ids[0]]),
            Entry(b"machine-id", "file", size=32, content=[ids[1]]),
        ]
    )
    bin_ = encode_tree([Entry(b"tool", "file", mode=0o755, size=len(tool), content=[ids[2]])])
    [etc_id, bin_id] = dev.upload([(BlobKind.TREE, etc), (BlobKind.TREE, bin_)])
    usr = encode_tree([Entry(b"bin", "dir", mode=0o755, subtree=bin_id)])
    [usr_id] = dev.upload([(BlobKind.TREE, usr)])
    root = encode_tree(
        [
            Entry(b"etc", "dir", mode=0o755, subtree=etc_id),
            Entry(b"usr", "dir", mode=0o755, subtree=usr_id),
        ]
    )
    [root_id] = dev.upload([(BlobKind.TREE, root)])
    r = dev.client.post("/agent/commit", json={"root": root_id.hex(), "files": 3, "bytes": 0})
    assert r.status_code == 200, r.text
    return dev


class Racing:
    """Stands in for a service's ``insert_held``: its trees are written, its rows not
    yet; a gc marks and condemns now (the new trees are unreachable), and sweeps once
    the rows are in."""

    def __init__(self, store: Store, original: Any) -> None:
        self.store, self.original = store, original
        self.swept: list[gc.GcReport] = []

    def __call__(
        self, engine: Any, st: Any, epoch: int, roots: list[bytes], body: Any, what: str
    ) -> Any:
        sources = all_roots(self.store)
        plan = gc.plan_gc(self.store, sources, references)
        gc._condemn(self.store, sources, references, plan, owners(self.store))
        assert set(roots) <= plan.dead  # the new trees: condemned
        out = self.original(engine, st, epoch, roots, body, what)
        report = gc.GcReport()
        gc._execute(self.store, plan, report)
        self.swept.append(report)
        return out

    def kept(self, root: bytes) -> None:
        """The sweep ran, and every blob under ``root`` is readable; the store checks."""
        assert self.swept and self.swept[0].packs_deleted + self.swept[0].packs_repacked >= 1
        names = list(walk_blobs(self.store, root))
        assert self.store.catalog.missing(names) == set()
        assert all(self.store.get(b) for b in names)
        assert check(self.store, all_roots(self.store), references, read_data=True).ok


def _server_store(live: Live) -> Store:
    ctx, _ = open_context(ServerSettings(data=live.data, admin_password=ADMIN_PASSWORD))
    return ctx.store


def test_a_layer_captured_while_a_gc_condemns_keeps_every_blob_it_names(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = _reference_device(live)
    racing = Racing(_server_store(live), layer_capture.insert_held)
    monkeypatch.setattr(layer_capture, "insert_held", racing)
    r = live.login().post("/layers/capture", json={"cvd": dev.cvd_id, "name": "base-os"})
    assert r.status_code == 201, r.text
    [version] = r.json()["versions"]
    racing.kept(bytes.fromhex(version["root"]))


def test_a_layer_delivery_made_while_a_gc_condemns_keeps_its_delta(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An assignment writes the delivery's delta tree (what the endpoint lacks), then its
    task: the task, queued, keeps the delta for the endpoint to fetch."""
    ref = _reference_device(live)
    admin = live.login()
    r = admin.post("/layers/capture", json={"cvd": ref.cvd_id, "name": "base-os"})
    assert r.status_code == 201, r.text
    target = live.device("pc-2")
    target.commit_files({b"notes.txt": [b"the target's own file " + os.urandom(32)]})
    racing = Racing(_server_store(live), layer_assign.insert_held)
    monkeypatch.setattr(layer_assign, "insert_held", racing)
    r = admin.post("/layers/assign", json={"cvds": [target.cvd_id], "base": "base-os"})
    assert r.status_code == 200, r.text
    [planned] = r.json()
    assert planned["status"] == "assigned" and planned["task"], planned
    task = admin.get(f"/tasks/{planned['task']}").json()
    racing.kept(bytes.fromhex(task["params"]["delta"]))


def test_a_recordings_start_snapshot_outlives_retention_and_the_gc(embedded: Shape) -> None:
    """A reference CVD whose policy keeps one snapshot records an app layer across several
    syncs and a gc: its start snapshot (the layer is the difference from it) is kept for
    the recording, and the layer is captured. Retention forgot it, the gc took its data,
    and the recording's last commit failed."""
    live = embedded.live
    one = {"keep_last": 1, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    dev = _reference_device(live, one)
    admin = live.login()
    r = admin.post("/layers/record/start", json={"device": "ref-1"})
    assert r.status_code == 202, r.text
    base = {b"os-file": [b"the system before the install " + os.urandom(64)]}
    start = dev.commit_files(base)  # the recording starts at this snapshot
    dev.commit_files({**base, b"cache": [os.urandom(200)]})  # a sync while it records
    run_gc(embedded, "api")
    assert start in {s["id"] for s in admin.get(f"/cvds/{dev.cvd_id}/snapshots").json()}
    r = admin.post("/layers/record/finalize", json={"device": "ref-1", "name": "viewer"})
    assert r.status_code == 202, r.text
    app = b"the viewer's program " + os.urandom(64)
    dev.commit_files({**base, b"viewer": [app]})  # the layer is captured at this commit
    layer = admin.get("/layers/viewer")
    assert layer.status_code == 200, layer.text
    [version] = layer.json()["versions"]
    assert version["files"] >= 1
    # once the recording is done, the start is the policy's again: the next sync forgets it
    dev.commit_files({**base, b"viewer": [app], b"later": [os.urandom(50)]})
    assert start not in {s["id"] for s in admin.get(f"/cvds/{dev.cvd_id}/snapshots").json()}


def test_a_recording_whose_start_is_gone_ends_without_failing_its_cvds_commits(
    embedded: Shape,
) -> None:
    """A recording whose start was forgotten before it was kept for it (an upgrade from
    before session 24): its commit at finalize ends the recording, it does not fail, and
    neither do the CVD's next ones."""
    live = embedded.live
    dev = _reference_device(live)
    admin = live.login()
    assert admin.post("/layers/record/start", json={"device": "ref-1"}).status_code == 202
    base = {b"os-file": [b"the system " + os.urandom(64)]}
    start = dev.commit_files(base)
    _server_store(live).forget([start])  # (as retention did before)
    r = admin.post("/layers/record/finalize", json={"device": "ref-1", "name": "viewer"})
    assert r.status_code == 202, r.text
    dev.commit_files({**base, b"viewer": [os.urandom(64)]})  # 200: not failed
    dev.commit_files({**base, b"later": [os.urandom(64)]})
    assert admin.get("/layers/viewer").status_code == 404


def test_a_cancelled_recording_captures_nothing_and_releases_its_start(embedded: Shape) -> None:
    """``record cancel``: nothing is captured, the start snapshot is the policy's again (a
    policy keeping one forgets it at the next sync) and a new recording may start."""
    live = embedded.live
    one = {"keep_last": 1, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    dev = _reference_device(live, one)
    admin = live.login()
    assert admin.post("/layers/record/cancel", json={"device": "ref-1"}).status_code == 409
    assert admin.post("/layers/record/start", json={"device": "ref-1"}).status_code == 202
    base = {b"os-file": [b"the system " + os.urandom(64)]}
    start = dev.commit_files(base)
    dev.commit_files({**base, b"a": [os.urandom(64)]})
    snaps = {s["id"] for s in admin.get(f"/cvds/{dev.cvd_id}/snapshots").json()}
    assert start in snaps  # kept for the recording
    r = admin.post("/layers/record/cancel", json={"device": "ref-1"})
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    dev.commit_files({**base, b"b": [os.urandom(64)]})
    snaps = {s["id"] for s in admin.get(f"/cvds/{dev.cvd_id}/snapshots").json()}
    assert start not in snaps and len(snaps) == 1  # released: the policy's again
    r = admin.post("/layers/record/finalize", json={"device": "ref-1", "name": "x"})
    assert r.status_code == 409  # nothing to finalize
    assert admin.post("/layers/record/start", json={"device": "ref-1"}).status_code == 202
    assert any(e["action"] == "layer.record_cancel" for e in admin.get("/audit").json())
