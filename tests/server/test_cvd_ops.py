"""One snapshot reference resolver: ids and prefixes are resolved within the CVD."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.server.services.cvd_ops import _walk_to, resolve_snapshot, snapshot_of
from lamina.store.catalog import SnapshotRecord
from lamina.tree.model import Entry, encode_tree

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def snap(sid: str, source: str = "cvd:a", minutes: int = 0) -> SnapshotRecord:
    return SnapshotRecord(sid, T0 + dt.timedelta(minutes=minutes), source, bytes(32), 0, 0)


MINE = [snap("abcd1111" + "0" * 56), snap("abce2222" + "0" * 56, minutes=1)]


def test_latest_an_id_and_a_prefix() -> None:
    assert resolve_snapshot(MINE, "latest") is MINE[1]
    assert resolve_snapshot(MINE, MINE[0].id) is MINE[0]
    assert resolve_snapshot(MINE, "ABCD") is MINE[0]  # hex digits in either case
    assert resolve_snapshot(MINE, "abce22") is MINE[1]


@pytest.mark.parametrize(
    ("ref", "error", "why"),
    [
        ("abc", UsageError, "at least 4 hex digits"),
        ("lates", UsageError, "at least 4 hex digits"),
        ("ffff", NotFoundError, "no snapshot ffff"),
    ],
)
def test_a_bad_reference_is_a_clear_error(ref: str, error: type[Exception], why: str) -> None:
    with pytest.raises(error, match=why):
        resolve_snapshot(MINE, ref)


def test_a_prefix_two_of_the_cvds_snapshots_share_is_ambiguous() -> None:
    with pytest.raises(ConflictError, match="ambiguous"):
        resolve_snapshot([*MINE, snap("abcd9999" + "0" * 56)], "abcd")


def test_latest_of_a_cvd_without_snapshots() -> None:
    with pytest.raises(NotFoundError, match="no snapshots yet"):
        resolve_snapshot([], "latest")


class Catalog:
    def __init__(self, snaps: list[SnapshotRecord]) -> None:
        self.snaps = snaps

    def snapshots(self, source: str | None = None) -> list[SnapshotRecord]:
        return [s for s in self.snaps if source is None or s.source == source]


class Store:
    def __init__(self, snaps: list[SnapshotRecord]) -> None:
        self.catalog = Catalog(snaps)


def test_another_cvds_snapshot_neither_matches_nor_makes_a_prefix_ambiguous() -> None:
    theirs = snap("abcd5555" + "0" * 56, source="cvd:b", minutes=5)
    store = Store([*MINE, theirs])
    assert snapshot_of(store, "a", "abcd") is MINE[0]  # type: ignore[arg-type]
    assert snapshot_of(store, "a", "latest") is MINE[1]  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        snapshot_of(store, "a", theirs.id)  # type: ignore[arg-type]
    assert snapshot_of(store, "b", "abcd") is theirs  # type: ignore[arg-type]


class _Trees:
    """Trees by id, as ``Store.get`` reads them."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}

    def put(self, entries: list[Entry]) -> bytes:
        tid = len(self.blobs).to_bytes(32, "big")
        self.blobs[tid] = encode_tree(entries)
        return tid

    def get(self, tid: bytes) -> bytes:
        return self.blobs[tid]


def test_browse_walks_to_a_folder_or_a_file_through_the_one_tree_lookup() -> None:
    trees = _Trees()
    hosts = Entry(b"hosts", "file", size=12, content=[])
    etc = Entry(b"etc", "dir", mode=0o755, subtree=trees.put([hosts]))
    root = trees.put([etc, Entry(b"link", "symlink", target=b"etc")])
    store: Any = trees
    assert [e.name for e in _walk_to(store, root, "/")[0]] == [b"etc", b"link"]
    assert _walk_to(store, root, "/etc") == ([hosts], None)
    assert _walk_to(store, root, "etc/hosts") == ([], hosts)
    for missing in ("/nope", "/etc/nope", "/etc/hosts/deeper", "/link/hosts"):
        with pytest.raises(NotFoundError, match="is not in the snapshot"):
            _walk_to(store, root, missing)
