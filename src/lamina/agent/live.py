"""The endpoint as it is now, against a tree: revert plans and delivery checks.

Reverts and layer deliveries are planned from trees; before anything is staged
they are compared with the live root, never with a staged copy: ``plan_revert``
walks the snapshot tree and the root together; ``live_state`` is what a
delivery's ``expect`` is checked against.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.layers.trees import content_digest
from lamina.store import blob
from lamina.store.chunker import Chunker
from lamina.store.keys import ChunkingSecret
from lamina.tree.model import Entry, decode_tree
from lamina.tree.scan_read import xattrs_at


def is_real_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except FileNotFoundError:
        return False


def lstat_or_none(p: Path) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except FileNotFoundError:
        return None


# --- planning a revert from the snapshot tree --------------------------------------
@dataclass
class RevertScope:
    """What a revert may touch on the endpoint.

    ``keep(path)``: the path's class is kept as it is now (user data in a
    system-only revert, excluded paths always). ``protected(path, is_dir)``: the
    snapshot's policy protected the path, so its absence from the snapshot means
    "not there then"; None when the snapshot's policy is unknown, and then
    nothing is removed. ``untouched``: endpoint paths (relative) never touched,
    nor anything below them: the scan's error paths, the agent's own folders.
    """

    keep: Callable[[str], bool]
    protected: Callable[[str, bool], bool] | None
    untouched: frozenset[str] = frozenset()

    def leaves_alone(self, rel: str) -> bool:
        if self.keep("/" + rel):
            return True
        parts = rel.split("/")
        return any("/".join(parts[: i + 1]) in self.untouched for i in range(len(parts)))


@dataclass
class RevertPlan:
    """Ops that put the snapshot back, and why each path changes."""

    ops: list[list[str]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    space_needed: int = 0
    #: folder -> {"old", "new"} metadata (see ``entry_meta``) for its ``meta`` op
    meta: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def public(self, limit: int = 200) -> dict[str, Any]:
        """For a task result: full counts, the first ``limit`` paths of each list."""
        return {
            "counts": {
                "add": len(self.added),
                "update": len(self.updated),
                "remove": len(self.removed),
                "skipped": len(self.skipped),
            },
            "add": self.added[:limit],
            "update": self.updated[:limit],
            "remove": self.removed[:limit],
            "skipped": self.skipped[:limit],
            "space_needed": self.space_needed,
        }


def tree_bytes(load: Callable[[bytes], bytes], e: Entry) -> int:
    if e.subtree is None:
        return e.size
    return sum(tree_bytes(load, c) for c in decode_tree(load(e.subtree)))


def xattrs_of(path: Path) -> list[tuple[bytes, bytes]]:
    return xattrs_at(os.fsencode(path))


#: A sync cuts a file in pieces of this size (``tree.scan``); so must a comparison.
READ_PIECE = 64 * 1024 * 1024


def file_chunks(path: Path, chunker: Chunker, id_key: bytes) -> list[bytes] | None:
    """The content ids of a live file as a sync would cut them (None: unreadable).

    Read in pieces, so memory stays bounded whatever the file's size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    ids: list[bytes] = []
    try:
        off = 0
        while True:
            data = os.pread(fd, READ_PIECE, off)
            if not data:
                return ids
            ids += [blob.blob_id(id_key, view) for view in chunker.cut(data)]
            off += len(data)
    except OSError:
        return None
    finally:
        os.close(fd)


def compare_live(path: Path, st: os.stat_result, e: Entry, chunking: ChunkingSecret) -> str:
    """``same``, ``metadata`` (content right, mode/owner/xattrs not) or ``content``."""
    typ = {
        stat.S_IFREG: "file",
        stat.S_IFDIR: "dir",
        stat.S_IFLNK: "symlink",
        stat.S_IFIFO: "fifo",
        stat.S_IFCHR: "chardev",
        stat.S_IFBLK: "blockdev",
        stat.S_IFSOCK: "socket",
    }.get(stat.S_IFMT(st.st_mode))
    if typ != e.type:
        return "content"
    if typ == "symlink":
        return "same" if os.readlink(os.fsencode(path)) == e.target else "content"
    if typ in ("chardev", "blockdev") and st.st_rdev != e.rdev:
        return "content"
    if typ == "file":
        if st.st_size != e.size:
            return "content"
        content = e.content or []
        if any(isinstance(c, int) for c in content):
            return "content"  # sparse in the snapshot: cheaper to write it again
        if file_chunks(path, Chunker(chunking), chunking.id_key) != content:
            return "content"
    if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (e.mode, e.uid, e.gid):
        return "metadata"
    if xattrs_of(path) != sorted(e.xattrs):
        return "metadata"
    return "same"


def entry_meta(e: Entry) -> list[Any]:
    """A folder's metadata as a journal keeps it: [mode, uid, gid, [[name hex, value hex]]]."""
    return [e.mode, e.uid, e.gid, [[k.hex(), v.hex()] for k, v in sorted(e.xattrs)]]


def dir_meta(path: Path) -> list[Any]:
    st = os.lstat(path)
    xs = [[k.hex(), v.hex()] for k, v in xattrs_of(path)]
    return [stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xs]


def plan_revert(
    load: Callable[[bytes], bytes],
    tree_root: bytes,
    root: Path,
    scope: RevertScope,
    chunking: ChunkingSecret,
) -> RevertPlan:
    """Compare the snapshot TREE with the live root, never a staged copy.

    A path the snapshot lacks is removed only when the snapshot's policy
    protected it (else it was simply never backed up); mount points of other
    file systems, kept classes and ``scope.untouched`` are left alone; a file
    whose content is right but whose metadata is not is rewritten whole.
    """
    plan = RevertPlan()
    root_dev = os.lstat(root).st_dev

    def removable(rel: str, st: os.stat_result) -> bool:
        """May ``rel`` go whole? Otherwise its removable parts are planned one by one."""
        is_dir = stat.S_ISDIR(st.st_mode)
        if scope.protected is None or not scope.protected("/" + rel, is_dir):
            return False
        if not is_dir:
            return True
        whole, parts = True, []
        for name in sorted(os.listdir(root / rel)):
            child = f"{rel}/{name}"
            cst = lstat_or_none(root / child)
            if cst is None:
                continue
            if scope.leaves_alone(child) or cst.st_dev != root_dev:
                whole = False
                continue
            if removable(child, cst):
                parts.append(child)
            else:
                whole = False
        if whole:
            return True
        for child in parts:
            plan.ops.append(["remove", child])
            plan.removed.append(child)
        return False

    def walk(tree_id: bytes | None, rel: str) -> None:
        entries = {os.fsdecode(e.name): e for e in (decode_tree(load(tree_id)) if tree_id else [])}
        here = root / rel if rel else root
        live = set(os.listdir(here)) if is_real_dir(here) else set()
        for name in sorted(set(entries) | live):
            child = f"{rel}/{name}" if rel else name
            if scope.leaves_alone(child):
                continue
            e, st = entries.get(name), lstat_or_none(root / child)
            if st is not None and st.st_dev != root_dev:
                plan.skipped.append(child)  # a mount point: another file system's business
                continue
            if e is None:
                if st is not None and removable(child, st):
                    plan.ops.append(["remove", child])
                    plan.removed.append(child)
                continue
            if st is None:
                plan.ops.append(["swap", child])
                plan.added.append(child)
                plan.space_needed += tree_bytes(load, e)
                continue
            if e.type == "dir" and stat.S_ISDIR(st.st_mode):
                if compare_live(root / child, st, e, chunking) == "metadata":
                    plan.ops.append(["meta", child])
                    plan.meta[child] = {"old": dir_meta(root / child), "new": entry_meta(e)}
                    plan.updated.append(child)
                walk(e.subtree, child)
                continue
            if compare_live(root / child, st, e, chunking) != "same":
                plan.ops.append(["swap", child])
                plan.updated.append(child)
                plan.space_needed += tree_bytes(load, e)

    walk(tree_root, "")
    return plan


def live_state(path: Path, chunking: ChunkingSecret) -> list[Any] | None:
    """The live counterpart of ``layers.trees.expected_state``."""
    st = lstat_or_none(path)
    if st is None:
        return None
    if stat.S_ISREG(st.st_mode):
        ids = file_chunks(path, Chunker(chunking), chunking.id_key)
        return ["file", st.st_size, content_digest(list(ids)) if ids is not None else ""]
    if stat.S_ISLNK(st.st_mode):
        return ["symlink", os.readlink(os.fsencode(path)).hex()]
    return ["dir" if stat.S_ISDIR(st.st_mode) else "other"]
