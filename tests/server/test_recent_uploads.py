"""A commit answers the blobs its CVD's bundles stored from memory, under the same gc epoch only."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from lamina.server.services import access, store_ops
from lamina.server.services.recent_uploads import RecentUploads
from lamina.store.blob import BlobKind
from lamina.tree.model import Entry, encode_tree
from tests.server.conftest import Device, Live


def test_a_memo_is_of_one_epoch_bounded_and_forgotten_at_commit() -> None:
    recent = RecentUploads(limit=5)
    a = [bytes([i]) * 32 for i in range(8)]
    recent.add("cvd-a", 3, [(BlobKind.DATA, a[0], 10), (BlobKind.TREE, a[1], 20)])
    assert recent.of("cvd-a", 3) == {BlobKind.DATA: {a[0]: 10}, BlobKind.TREE: {a[1]: 20}}
    assert recent.of("cvd-b", 3) == {}
    # a bundle whose writer began before a collection the memo is past adds nothing
    recent.add("cvd-a", 4, [(BlobKind.DATA, a[2], 30)])
    recent.add("cvd-a", 3, [(BlobKind.DATA, a[3], 40)])
    assert recent.of("cvd-a", 4) == {BlobKind.DATA: {a[2]: 30}}
    # asked under another epoch (a collection ran since): nothing, and dropped
    assert recent.of("cvd-a", 5) == {} and len(recent) == 0
    # bounded: the CVD stored into least recently goes first; one alone keeps what fits
    recent.add("cvd-a", 5, [(BlobKind.DATA, a[0], 1), (BlobKind.DATA, a[1], 1)])
    recent.add("cvd-b", 5, [(BlobKind.DATA, i, 1) for i in a[2:6]])
    assert recent.of("cvd-a", 5) == {} and len(recent) == 4
    recent.add("cvd-b", 5, [(BlobKind.DATA, i, 1) for i in a[6:]])
    assert len(recent) == 5 and len(recent.of("cvd-b", 5)[BlobKind.DATA]) == 5
    recent.forget("cvd-b")
    assert recent.of("cvd-b", 5) == {} and len(recent) == 0


def _joined(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of ids each ownership join of a commit walk (``stored_as``) asks about."""
    asked: list[int] = []
    real = access.driver_rows

    def counting(c: Any, sql: str, params: Any) -> Any:
        if sql.startswith("SELECT b.id, b.raw_length FROM blobs b JOIN cvd_blobs"):
            asked.append(len(params) - 2)  # (the CVD and the kind bound besides the ids)
        return real(c, sql, params)

    monkeypatch.setattr(access, "driver_rows", counting)
    return asked


def _upload_files(dev: Device, contents: list[bytes], prefix: str = "f") -> tuple[list[Entry], int]:
    """``contents`` uploaded in one bundle (nothing committed): their entries and bytes."""
    ids = dev.upload([(BlobKind.DATA, c) for c in contents])
    entries = [
        Entry(f"{prefix}{i}".encode(), "file", size=len(c), content=[bid])
        for i, (c, bid) in enumerate(zip(contents, ids, strict=True))
    ]
    return entries, sum(len(c) for c in contents)


def _commit(dev: Device, entries: list[Entry], size: int) -> httpx.Response:
    """The folder of ``entries`` uploaded as its tree (a bundle of its own) and committed."""
    [root] = dev.upload([(BlobKind.TREE, encode_tree(sorted(entries, key=lambda e: e.name)))])
    return dev.client.post(
        "/agent/commit", json={"root": root.hex(), "files": len(entries), "bytes": size}
    )


def test_a_commit_asks_the_database_nothing_of_what_its_bundles_stored(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first sync's commit held each chunk to the CVD's ownership by a join of the
    ownership rows to the catalog (about half of its CPU); the server stored those
    chunks from the CVD's bundles a moment before and remembers them: the walk asks the
    database about none of them. Once committed they are forgotten: the next commit,
    naming them under new names, asks about them, and only them."""
    dev = live.device("pc-recent")
    asked = _joined(monkeypatch)
    first, size = _upload_files(dev, [os.urandom(3000 + i) for i in range(40)])
    r = _commit(dev, first, size)
    assert r.status_code == 200, r.text
    assert asked == []  # 40 chunks, none asked about
    renamed = [Entry(b"old-" + e.name, "file", size=e.size, content=e.content) for e in first]
    new, new_size = _upload_files(dev, [os.urandom(2000 + i) for i in range(3)], "g")
    r = _commit(dev, renamed + new, size + new_size)
    assert r.status_code == 200, r.text
    assert sum(asked) == 40  # the renamed ones: stored before this sync; not the 3 new


def test_a_collection_between_the_bundles_and_the_commit_makes_it_ask_the_database(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs uploaded but not committed are what a collection condemns and sweeps. What
    the server remembers of them is of the epoch before it: the commit must not take it,
    or its snapshot would name blobs the store no longer holds. It asks the database, is
    answered "missing", and nothing is committed; the agent uploads again and commits,
    and the store checks whole."""
    dev = live.device("pc-gc")
    admin = live.login()
    asked = _joined(monkeypatch)
    contents = [os.urandom(3000 + i) for i in range(20)]
    entries, size = _upload_files(dev, contents)
    r = admin.post("/store/gc", json={"dry_run": False})
    assert r.status_code == 202, r.text
    store_ops.wait(r.json()["id"])
    gc = admin.get(f"/tasks/{r.json()['id']}").json()
    assert gc["state"] == "done" and gc["result"]["condemned"] >= 20, gc
    r = _commit(dev, entries, size)  # (its tree stored after the collection)
    assert r.status_code == 422 and r.json()["code"] == "missing_data", r.text
    assert sum(asked) == 20  # the database was asked about every chunk
    assert admin.get(f"/cvds/{dev.cvd_id}/snapshots").json() == []
    entries, size = _upload_files(dev, contents)  # the agent's next scan
    r = _commit(dev, entries, size)
    assert r.status_code == 200, r.text
    check = admin.post("/store/check", json={"read_data": True})
    store_ops.wait(check.json()["id"])
    assert admin.get(f"/tasks/{check.json()['id']}").json()["result"]["ok"]
