"""A restore never writes outside its target, whatever the tree or the target holds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
import pytest

from lamina.errors import IntegrityError, UnsafePathError
from lamina.store.blob import BlobKind
from lamina.store.repository import Store
from lamina.tree.model import Entry, encode_tree
from lamina.tree.restore import restore_tree

from .treeutil import MTIME, assert_same_tree, scan_tree, write


def raw_entry(name: bytes, typ: str = "file", **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "type": typ,
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "user": "",
        "group": "",
        "mtime": MTIME,
        "size": 0,
    }
    d.update(extra)
    return d


def put_raw_tree(store: Store, entries: list[dict[str, Any]]) -> bytes:
    """Store a tree object exactly as given: no sorting, no validation."""
    with store.writer() as w:
        return w.put(BlobKind.TREE, msgpack.packb({"v": 1, "entries": entries}, use_bin_type=True))


def put_chunk(store: Store, data: bytes) -> bytes:
    with store.writer() as w:
        return w.put(BlobKind.DATA, data)


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def arena(tmp_path: Path) -> Path:
    """A folder holding the restore target and a sentinel; only the target may change."""
    a = tmp_path / "arena"
    (a / "target").mkdir(parents=True)
    write(a / "sentinel", b"must stay")
    (a / "outside-dir").mkdir()
    return a


def assert_arena_untouched(arena: Path) -> None:
    assert sorted(os.listdir(arena)) == ["outside-dir", "sentinel", "target"]
    assert (arena / "sentinel").read_bytes() == b"must stay"
    assert os.listdir(arena / "outside-dir") == []


@pytest.mark.parametrize(
    "name",
    [b"..", b".", b"", b"a/b", b"/etc", b"../sentinel", b"x\0y", b"../outside-dir/evil"],
)
@pytest.mark.parametrize("typ", ["file", "dir", "symlink"])
def test_hostile_names_are_refused(store: Store, arena: Path, name: bytes, typ: str) -> None:
    chunk = put_chunk(store, b"pwned")
    empty = put_raw_tree(store, [])
    extra: dict[str, Any] = {
        "file": {"size": 5, "content": [chunk]},
        "dir": {"subtree": empty},
        "symlink": {"target": b"/etc/passwd"},
    }[typ]
    tid = put_raw_tree(store, [raw_entry(name, typ, **extra)])
    with pytest.raises(UnsafePathError, match="unsafe name"):
        restore_tree(store, tid, arena / "target")
    assert_arena_untouched(arena)
    assert os.listdir(arena / "target") == []


def test_hostile_name_deep_in_the_tree_is_refused(store: Store, arena: Path) -> None:
    chunk = put_chunk(store, b"pwned")
    bad = put_raw_tree(store, [raw_entry(b"../../sentinel", size=5, content=[chunk])])
    mid = put_raw_tree(store, [raw_entry(b"inner", "dir", subtree=bad)])
    top = put_raw_tree(store, [raw_entry(b"outer", "dir", subtree=mid)])
    with pytest.raises(UnsafePathError):
        restore_tree(store, top, arena / "target")
    assert_arena_untouched(arena)


def test_duplicate_names_are_refused_symlink_then_dir(store: Store, arena: Path) -> None:
    """``evil -> outside`` followed by a directory ``evil`` holding a file.

    If both were accepted, the file could land in the symlink's target.
    """
    chunk = put_chunk(store, b"pwned")
    payload = put_raw_tree(store, [raw_entry(b"dropped", size=5, content=[chunk])])
    outside = os.fsencode(arena / "outside-dir")
    tid = put_raw_tree(
        store,
        [
            raw_entry(b"evil", "symlink", target=outside),
            raw_entry(b"evil", "dir", subtree=payload),
        ],
    )
    with pytest.raises(IntegrityError, match="not sorted or not unique"):
        restore_tree(store, tid, arena / "target")
    assert_arena_untouched(arena)


def test_encoding_refuses_duplicate_names() -> None:
    with pytest.raises(IntegrityError, match="duplicate"):
        encode_tree([Entry(b"x", "file", content=[]), Entry(b"x", "dir", subtree=bytes(32))])


def test_existing_symlink_where_the_tree_has_a_directory_is_replaced(
    store: Store, arena: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "sub" / "file", b"inside sub\n")
    write(src / "sub" / "deeper" / "f2", b"f2\n")
    tid, _ = scan_tree(store, src)
    target = arena / "target"
    os.symlink(arena / "outside-dir", target / "sub")
    st = restore_tree(store, tid, target)
    assert st.errors == []
    assert_arena_untouched(arena)
    assert not (target / "sub").is_symlink() and (target / "sub").is_dir()
    assert_same_tree(src, target)


def test_existing_symlink_where_the_tree_has_a_file_is_replaced_not_written_through(
    store: Store, arena: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    data = b"restored data!\n"
    write(src / "f", data, MTIME)
    write(src / "g", data, MTIME)
    tid, _ = scan_tree(store, src)
    target = arena / "target"
    # Same size and mtime as the tree's file: a restore that stat()s through the link
    # would take it as "already in place"; one that open()s it would overwrite it.
    victim = write(arena / "outside-dir" / "victim", b"x" * len(data), MTIME)
    os.symlink(victim, target / "f")
    os.symlink(victim, target / "g")
    st = restore_tree(store, tid, target)
    assert st.errors == [] and st.skipped == 0
    assert victim.read_bytes() == b"x" * len(data)
    assert os.stat(victim).st_mtime_ns == MTIME
    for n in ("f", "g"):
        assert not (target / n).is_symlink()
        assert (target / n).read_bytes() == data


def test_existing_hardlink_to_an_outside_file_is_not_written_into(
    store: Store, arena: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "f", b"new content\n", MTIME)
    tid, _ = scan_tree(store, src)
    victim = write(arena / "sentinel2", b"outside data", MTIME + 7)
    os.link(victim, arena / "target" / "f")
    restore_tree(store, tid, arena / "target")
    assert victim.read_bytes() == b"outside data"
    assert os.stat(victim).st_nlink == 1
    assert (arena / "target" / "f").read_bytes() == b"new content\n"


@pytest.mark.parametrize("typ", ["symlink", "fifo", "chardev"])
def test_existing_symlink_where_the_tree_has_a_special_file(
    store: Store, arena: Path, typ: str
) -> None:
    extra: dict[str, Any] = {
        "symlink": {"target": b"harmless", "mode": 0o777},
        "fifo": {"mode": 0o600},
        "chardev": {"rdev": os.makedev(1, 3), "mode": 0o600},
    }[typ]
    tid = put_raw_tree(store, [raw_entry(b"node", typ, uid=1234, gid=5678, **extra)])
    victim = write(arena / "outside-dir" / "victim", b"keep", MTIME)
    os.chown(victim, 0, 0)
    os.chmod(victim, 0o644)
    os.symlink(victim, arena / "target" / "node")
    st = restore_tree(store, tid, arena / "target")
    assert st.errors == []
    vs = os.stat(victim)
    assert (vs.st_uid, vs.st_gid, vs.st_mode & 0o7777, vs.st_mtime_ns) == (0, 0, 0o644, MTIME)
    assert victim.read_bytes() == b"keep"
    ns = os.lstat(arena / "target" / "node")
    assert (ns.st_uid, ns.st_gid) == (1234, 5678)


def test_symlinks_in_the_tree_are_never_followed_by_later_entries(
    store: Store, arena: Path
) -> None:
    """A symlink ``a -> outside`` and, in a *different* directory, content: all stay inside."""
    chunk = put_chunk(store, b"pwned")
    outside = os.fsencode(arena / "outside-dir")
    payload = put_raw_tree(store, [raw_entry(b"dropped", size=5, content=[chunk])])
    tid = put_raw_tree(
        store,
        [
            raw_entry(b"a", "symlink", target=outside),
            raw_entry(b"b", "dir", subtree=payload),
            raw_entry(b"c", "symlink", target=b"../../sentinel"),
        ],
    )
    restore_tree(store, tid, arena / "target")
    assert_arena_untouched(arena)
    assert os.readlink(arena / "target" / "a") == str(arena / "outside-dir")
    assert (arena / "target" / "b" / "dropped").read_bytes() == b"pwned"


def test_hardlink_to_a_symlink_links_the_symlink_itself(store: Store, arena: Path) -> None:
    """A hostile tree giving a symlink and a file one hard-link key must not reach outside."""
    key = b"k" * 16
    tid = put_raw_tree(
        store,
        [
            raw_entry(b"a-link", "symlink", target=os.fsencode(arena / "sentinel"), hardlink=key),
            raw_entry(b"b-file", "file", hardlink=key, content=[]),
        ],
    )
    restore_tree(store, tid, arena / "target")
    assert_arena_untouched(arena)
    assert os.stat(arena / "sentinel").st_nlink == 1


def test_file_whose_chunks_do_not_add_up_is_refused_without_a_trace(
    store: Store, arena: Path
) -> None:
    chunk = put_chunk(store, b"12345")
    tid = put_raw_tree(store, [raw_entry(b"liar", size=6, content=[chunk])])
    with pytest.raises(IntegrityError, match="6"):
        restore_tree(store, tid, arena / "target")
    assert os.listdir(arena / "target") == []  # neither the file nor a temporary


@pytest.mark.parametrize(
    "field,value",
    [("uid", 2**40), ("gid", 2**32), ("rdev", -1), ("size", 2**64 - 1), ("content", [2**64 - 1])],
)
def test_out_of_range_numbers_are_integrity_errors(
    store: Store, arena: Path, field: str, value: int
) -> None:
    typ = "chardev" if field == "rdev" else "file"
    tid = put_raw_tree(store, [raw_entry(b"n", typ, **{field: value})])
    with pytest.raises(IntegrityError):
        restore_tree(store, tid, arena / "target")
    assert_arena_untouched(arena)


def test_delete_extra_removes_a_symlink_without_following_it(
    store: Store, arena: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "keep", b"k")
    tid, _ = scan_tree(store, src)
    write(arena / "outside-dir" / "precious", b"p")
    os.symlink(arena / "outside-dir", arena / "target" / "extra-link")
    (arena / "target" / "extra-dir").mkdir()
    os.symlink(arena / "outside-dir", arena / "target" / "extra-dir" / "inner-link")
    st = restore_tree(store, tid, arena / "target", delete_extra=True)
    assert st.removed == 2
    assert os.listdir(arena / "target") == ["keep"]
    assert (arena / "outside-dir" / "precious").read_bytes() == b"p"
