"""The gc takes back ownership no snapshot of the CVD keeps (``db/ownership.py``).

A device owns what it proved it holds (uploads, its snapshots, trees delivered to it).
A row that outlived the CVD's own snapshots told the device, after a gc, whether another
endpoint holds the content: kept for that endpoint the blob stayed "present" and
readable, collected it became "send it" (the content oracle). Each test runs a real
server on SQLite and its gc through the API or the CLI, as an admin would."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from lamina.config import ServerSettings
from lamina.db import ownership
from lamina.db.catalog import SqlCatalog
from lamina.db.engine import make_engine, read_tx
from lamina.db.models import cvd_blobs
from lamina.db.roots import all_roots, owners
from lamina.server.app import open_context
from lamina.store import gc
from lamina.store.blob import BlobKind
from lamina.tree.model import Entry, encode_tree, references
from tests.e2e.conftest import _deployment
from tests.server.conftest import ADMIN_PASSWORD, Device, Live, Shape, run_gc


def _owned_rows(shape: Shape, dev: Device) -> set[bytes]:
    engine = make_engine(shape.db_url)
    try:
        with read_tx(engine) as c:
            q = cvd_blobs.select().where(cvd_blobs.c.cvd_id == dev.cvd_id)
            return {bytes(r.blob_id) for r in c.execute(q)}
    finally:
        engine.dispose()


@pytest.fixture(params=["embedded", pytest.param("scaleout", marks=pytest.mark.e2e)])
def shape(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shape]:
    """The embedded server in this process (SQLite + folder), and a `lamina server`
    process on PostgreSQL and S3."""
    if request.param == "embedded":
        yield request.getfixturevalue("embedded")
        return
    pg, s3 = request.getfixturevalue("pg_db_url"), request.getfixturevalue("s3_url")
    for dep in _deployment(tmp_path, ["--db", pg, "--store", s3], 1):
        live = Live(dep.url, dep.servers[0].data)
        try:
            yield Shape(live, pg, dep.store_args, in_process=False)
        finally:
            for c in live.clients:
                c.close()


def _reads(dev: Device, bid: bytes) -> bytes | None:
    r = dev.client.post("/blobs/read", json={"ids": [bid.hex()]})
    if r.status_code == 403:
        return None
    assert r.status_code == 200, r.text
    [content] = msgpack.unpackb(r.content)
    return bytes(content)


@pytest.mark.parametrize("how", ["api", "cli"])
def test_after_a_gc_an_upload_never_committed_tells_nothing(shape: Shape, how: str) -> None:
    """Mallory uploads two guesses with their real bytes and never commits: A's private
    file (A's snapshot keeps it) and content nobody holds. Before a gc both are hers (she
    proved them); after it, both are "send it" and neither is readable: the same answers,
    where the row left behind answered "present" for the one the gc kept for A."""
    a, m = shape.live.device("pc-a"), shape.live.device("pc-mallory")
    secret = b"alice's private notes " + os.urandom(64)
    a.commit_files({b"notes.txt": [secret]})
    nobody = b"content no endpoint holds " + os.urandom(64)
    right, wrong = m.upload([(BlobKind.DATA, secret), (BlobKind.DATA, nobody)])
    assert m.missing([right, wrong]) == []  # proven by the upload: hers until the gc

    dry = run_gc(shape, how, dry_run=True)
    assert dry["owner_rows"] >= 2 and _owned_rows(shape, m) >= {right, wrong}
    report = run_gc(shape, how)
    assert report["owner_rows"] >= 2, report

    assert m.missing([right, wrong]) == [right.hex(), wrong.hex()]
    assert _reads(m, right) is None and _reads(m, wrong) is None
    assert _owned_rows(shape, m) == set()
    # Control: A's own snapshot keeps A's ownership, and A reads its file.
    assert a.missing([right]) == []
    assert _reads(a, right) == secret
    # Uploaded again, the content is hers again (she proves it once more).
    m.upload([(BlobKind.DATA, secret)])
    assert m.missing([right]) == [] and _reads(m, right) == secret


def test_a_snapshot_retention_forgot_leaves_its_blobs_to_the_cvd_no_more(embedded: Shape) -> None:
    """A CVD that keeps one snapshot commits a file (another endpoint holds the same
    content) and then a snapshot without it: after a gc the CVD owns only what its kept
    snapshot names, while its content stays for the other endpoint."""
    live = embedded.live
    admin = live.login()
    settings = {"keep_last": 1, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0}
    r = admin.post("/policies", json={"name": "std", "settings": {**settings, "keep_monthly": 0}})
    assert r.status_code == 201, r.text
    a, m = live.device("pc-a"), live.device("pc-m")
    shared = b"a file both endpoints had " + os.urandom(64)
    a.commit_files({b"shared.txt": [shared]})
    m.commit_files({b"shared.txt": [shared]})
    later = b"what m keeps now " + os.urandom(64)
    m.commit_files({b"later.txt": [later]})
    [bid] = [i for i in _owned_rows(embedded, a) if _reads(a, i) == shared]
    assert m.missing([bid]) == []  # its forgotten snapshot's row is still there

    run_gc(embedded, "api")
    assert m.missing([bid]) == [bid.hex()] and _reads(m, bid) is None
    [kept] = [i for i in _owned_rows(embedded, m) if _reads(m, i) == later]
    assert m.missing([kept]) == []
    assert a.missing([bid]) == [] and _reads(a, bid) == shared


def test_a_commit_the_condemn_overtook_keeps_its_snapshot_owned(
    embedded: Shape, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc condemns (and takes back the rows of blobs no snapshot names yet) between a
    commit's check of its blobs and its snapshot row: the snapshot lands (its blobs are
    rescued) and every blob it names is its CVD's, readable and not asked for again,
    also after the gc's next run."""
    live = embedded.live
    dev = live.device("pc-1")
    content = b"the file of the racing commit " + os.urandom(64)
    [data] = dev.upload([(BlobKind.DATA, content)])
    entries = [Entry(b"f", "file", size=len(content), content=[data])]
    [root] = dev.upload([(BlobKind.TREE, encode_tree(entries))])
    settings = ServerSettings(data=live.data, admin_password=ADMIN_PASSWORD)
    ctx, _ = open_context(settings)  # the gc's own view of the server's store
    original = SqlCatalog.add_snapshot
    taken: list[int] = []

    def add_snapshot(self: SqlCatalog, record: Any, expected_epoch: int) -> bool:
        if not taken:  # the first try: a gc marks and condemns before the row goes in
            store, roots = ctx.store, all_roots(ctx.store)
            plan = gc.plan_gc(store, roots, references)
            own = owners(store)
            own.plan(store, references)
            gc._condemn(store, roots, references, plan, own)
            taken.append(own.count)
        return original(self, record, expected_epoch)

    monkeypatch.setattr(SqlCatalog, "add_snapshot", add_snapshot)
    r = dev.client.post("/agent/commit", json={"root": root.hex(), "files": 1, "bytes": 0})
    assert r.status_code == 200, r.text
    assert taken[0] >= 2  # the gc did take its rows back
    monkeypatch.undo()
    for _ in range(2):
        assert dev.missing([data, root]) == []
        assert _reads(dev, data) == content
        assert _owned_rows(embedded, dev) >= {data, root}
        run_gc(embedded, "api")


def test_a_gc_takes_back_at_most_its_share_and_the_next_the_rest(
    embedded: Shape, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc takes back at most ``MAX_DROP`` rows in its condemn's transaction (the first
    one after an upgrade may find millions): the next gc takes the rest."""
    monkeypatch.setattr(ownership, "MAX_DROP", 2)
    m = embedded.live.device("pc-m")
    ids = m.upload([(BlobKind.DATA, os.urandom(100)) for _ in range(5)])
    assert run_gc(embedded, "api")["owner_rows"] == 2
    assert len(_owned_rows(embedded, m)) == 3
    assert run_gc(embedded, "api")["owner_rows"] == 2
    assert run_gc(embedded, "api")["owner_rows"] == 1
    assert _owned_rows(embedded, m) == set() and m.missing(ids) == [i.hex() for i in ids]
