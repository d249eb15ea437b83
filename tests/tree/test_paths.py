"""tree/paths.py: walk, lookup, read a file (bounded), filter and build trees."""

from __future__ import annotations

import pytest

from lamina.errors import TooLargeError
from lamina.store.blob import BlobKind
from lamina.tree.model import Entry, encode_tree
from lamina.tree.paths import (
    MAX_READ,
    build_tree,
    filter_tree,
    index,
    lookup,
    read_file,
    remembering,
    walk,
)
from tests.layers.golden_plan import MemoryTrees


def _never_loaded(bid: bytes) -> bytes:
    raise AssertionError("a refused file must not be read")


def test_a_hostile_hole_is_refused_before_allocating() -> None:
    """A device may commit a file that is one 2**40-byte hole; a merge must not allocate it."""
    e = Entry(name=b"status", type="file", size=2**40, content=[2**40])
    with pytest.raises(TooLargeError):
        read_file(_never_loaded, e)


def test_a_lying_size_is_caught_while_reading() -> None:
    chunk = b"x" * 1024
    e = Entry(name=b"f", type="file", size=10, content=[b"a" * 32] * 5)
    with pytest.raises(TooLargeError):
        read_file(lambda bid: chunk, e, limit=4000)


def test_small_files_read_whole() -> None:
    e = Entry(name=b"f", type="file", size=7, content=[b"a" * 32, 3])
    assert read_file(lambda bid: b"abcd", e) == b"abcd\0\0\0"
    assert MAX_READ >= 4 * 1024 * 1024


def _trees() -> tuple[MemoryTrees, bytes]:
    t = MemoryTrees()
    root = t.tree(
        {
            "/etc/hosts": "127.0.0.1 localhost\n",
            "/etc/ssh/sshd_config": "Port 22\n",
            "/usr/bin/sh": {"data": "#!", "mode": 0o755},
            "/usr/bin/link": {"type": "symlink", "target": "sh"},
            "/empty": {"type": "dir"},
        }
    )
    return t, root


def test_walk_lists_parents_first_and_index_by_path() -> None:
    t, root = _trees()
    paths = [p for p, _ in walk(t.load, root)]
    assert paths.index("/etc") < paths.index("/etc/ssh") < paths.index("/etc/ssh/sshd_config")
    assert set(index(t.load, root)) == set(paths) and len(paths) == 9
    assert list(walk(t.load, None)) == []


def test_lookup_finds_entries_and_refuses_paths_through_files() -> None:
    t, root = _trees()
    e = lookup(t.load, root, [b"etc", b"ssh", b"sshd_config"])
    assert e is not None and read_file(t.load, e) == b"Port 22\n"
    assert lookup(t.load, root, [b"etc"]) is not None
    assert lookup(t.load, root, [b"etc", b"nope"]) is None
    assert lookup(t.load, root, [b"etc", b"hosts", b"below-a-file"]) is None
    assert lookup(t.load, root, [b"empty", b"x"]) is None
    assert lookup(t.load, root, []) is None and lookup(t.load, None, [b"etc"]) is None


def test_same_content_is_size_and_chunk_ids() -> None:
    a = Entry(name=b"a", type="file", size=4, content=[b"i" * 32])
    assert a.same_content(Entry(name=b"b", type="file", size=4, content=[b"i" * 32], mode=0o600))
    assert not a.same_content(Entry(name=b"a", type="file", size=5, content=[b"i" * 32]))
    assert not a.same_content(Entry(name=b"a", type="file", size=4, content=[b"j" * 32]))
    assert not a.same_content(Entry(name=b"a", type="symlink", target=b"x"))
    link = Entry(name=b"l", type="symlink", target=b"x")
    assert link.same_content(Entry(name=b"l", type="symlink", target=b"x"))
    assert not link.same_content(Entry(name=b"l", type="symlink", target=b"y"))
    dev = Entry(name=b"d", type="chardev", rdev=1)
    assert not dev.same_content(Entry(name=b"d", type="chardev", rdev=2))
    assert Entry(name=b"f", type="fifo").same_content(Entry(name=b"g", type="fifo"))


def test_filter_and_build_trees() -> None:
    t, root = _trees()
    kept = filter_tree(t.load, t.put, root, lambda p, _e: p.startswith("/etc/ssh"))
    assert kept is not None and sorted(index(t.load, kept)) == [
        "/etc",
        "/etc/ssh",
        "/etc/ssh/sshd_config",
    ]
    assert filter_tree(t.load, t.put, root, lambda _p, _e: False) is None
    files = {p: e for p, e in index(t.load, root).items() if e.type == "file"}
    rebuilt = build_tree(t.put, files, {})
    assert {p for p, e in index(t.load, rebuilt).items() if e.type == "file"} == set(files)


def test_remembering_reads_back_trees_not_yet_stored() -> None:
    t = MemoryTrees()
    stored: dict[bytes, bytes] = {}

    def put(kind: BlobKind, data: bytes) -> bytes:
        bid = t.put(kind, data)
        if kind != BlobKind.TREE:
            stored[bid] = data
        return bid

    load, put2 = remembering(stored.__getitem__, put)
    tid = put2(BlobKind.TREE, encode_tree([]))
    assert load(tid) == encode_tree([]) and tid not in stored
