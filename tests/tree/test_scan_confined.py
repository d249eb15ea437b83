"""The scan never reads outside its tree (review finding 4).

A user who owns a folder inside the scanned tree swaps it, or a file in it, between
the listing and the read. The swap is done inside a wrapped ``os.open`` the moment
the scan opens the victim: deterministic, no race to win.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lamina.store.repository import Store
from lamina.tree.model import Entry, decode_tree

from .treeutil import scan_tree, write

SECRET = b"root:$6$SECRETHASH:19000:0:99999:7:::\n"
OWN = b"alice's own file, same length as the secret!\n"
ALICE = 1000


def entry_at(store: Store, tid: bytes, *parts: bytes) -> Entry | None:
    for i, part in enumerate(parts):
        found = {e.name: e for e in decode_tree(store.get(tid))}.get(part)
        if found is None or i == len(parts) - 1:
            return found
        assert found.subtree is not None
        tid = found.subtree
    return None


def content(store: Store, e: Entry) -> bytes:
    return b"".join(store.get(c) for c in e.chunk_ids())


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """ROOT/home/alice/x/shadow owned by alice; /etc-like folder outside the tree."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    write(etc / "shadow", SECRET)
    os.chmod(etc / "shadow", 0o640)
    root = tmp_path / "root"
    x = root / "home" / "alice" / "x"
    x.mkdir(parents=True)
    write(x / "shadow", OWN)
    write(x / "other", b"alice's other file\n")
    for p in (root / "home" / "alice", x, x / "shadow", x / "other"):
        os.chown(p, ALICE, ALICE, follow_symlinks=False)
    return tmp_path


def swap_at_open(
    monkeypatch: pytest.MonkeyPatch, victim: bytes, swap: Callable[[], None]
) -> list[bytes]:
    """Run ``swap`` once, just before the scan opens a path ending in ``victim``."""
    real = os.open
    done: list[bytes] = []

    def wrapped(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if not done and os.fsencode(path).endswith(victim):
            done.append(os.fsencode(path))
            swap()
        return real(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", wrapped)
    return done


def test_folder_swapped_for_a_symlink_after_listing_is_not_followed(
    store: Store, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = world / "root" / "home" / "alice" / "x"

    def swap() -> None:
        os.rename(x, x.with_name("x.old"))
        os.symlink(world / "etc", x)

    done = swap_at_open(monkeypatch, b"shadow", swap)
    tid, stats = scan_tree(store, world / "root")
    monkeypatch.undo()
    assert done, "the scan never opened the victim"
    e = entry_at(store, tid, b"home", b"alice", b"x", b"shadow")
    # What is stored is what was listed: alice's own file, owned by alice.
    assert e is not None
    assert content(store, e) == OWN
    assert (e.uid, e.gid, e.mode) == (ALICE, ALICE, 0o644)
    assert not stats.errors


def test_file_swapped_after_listing_is_left_out_not_read_with_the_wrong_owner(
    store: Store, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = world / "root" / "home" / "alice" / "x"
    os.link(world / "etc" / "shadow", world / "planted")  # root's file, under another name

    def swap() -> None:
        os.replace(world / "planted", x / "shadow")

    done = swap_at_open(monkeypatch, b"shadow", swap)
    tid, stats = scan_tree(store, world / "root")
    monkeypatch.undo()
    assert done, "the scan never opened the victim"
    # The name now leads to another inode than the one listed: reported and left out.
    assert entry_at(store, tid, b"home", b"alice", b"x", b"shadow") is None
    assert any("x/shadow: replaced while being scanned" in err for err in stats.errors)
    other = entry_at(store, tid, b"home", b"alice", b"x", b"other")
    assert other is not None and content(store, other) == b"alice's other file\n"


def test_subfolder_swapped_before_it_is_opened_is_not_followed(
    store: Store, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = world / "root" / "home" / "alice"

    def swap() -> None:
        os.rename(alice / "x", alice / "x.old")
        os.symlink(world / "etc", alice / "x")

    done = swap_at_open(monkeypatch, b"x", swap)
    tid, stats = scan_tree(store, world / "root")
    monkeypatch.undo()
    assert done, "the scan never opened the victim"
    # Never the outside folder's content under alice's name: the folder that was
    # listed is gone from its place, so it is reported and left out.
    assert entry_at(store, tid, b"home", b"alice", b"x") is None
    assert [e for e in stats.errors if "home/alice/x:" in e]
