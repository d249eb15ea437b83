"""Differences between two trees, skipping identical subtrees by id."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lamina.tree.model import Entry, decode_tree

ADDED = "added"
REMOVED = "removed"
MODIFIED = "modified"  # content (or symlink target, or type) differs
METADATA = "metadata"  # same content, other owner/mode/time/xattrs


@dataclass(frozen=True)
class Change:
    path: bytes
    kind: str
    old: Entry | None
    new: Entry | None

    def to_public(self) -> dict[str, object]:
        e = self.new or self.old
        assert e is not None
        return {
            "path": self.path.decode(errors="surrogateescape"),
            "change": self.kind,
            "type": e.type,
            "size": e.size,
        }


def diff_trees(
    load: Callable[[bytes], bytes], old: bytes | None, new: bytes | None, prefix: bytes = b""
) -> Iterator[Change]:
    """Yield changes from tree ``old`` to tree ``new`` (either may be None: empty)."""
    if old == new:
        return
    a = decode_tree(load(old)) if old is not None else []
    b = decode_tree(load(new)) if new is not None else []
    i = j = 0
    while i < len(a) or j < len(b):
        ea = a[i] if i < len(a) else None
        eb = b[j] if j < len(b) else None
        if eb is None or (ea is not None and ea.name < eb.name):
            assert ea is not None
            yield from _one_side(load, ea, prefix, REMOVED)
            i += 1
        elif ea is None or eb.name < ea.name:
            yield from _one_side(load, eb, prefix, ADDED)
            j += 1
        else:
            path = prefix + ea.name
            if ea.type == "dir" and eb.type == "dir":
                if not ea.same_metadata(eb):
                    yield Change(path, METADATA, ea, eb)
                yield from diff_trees(load, ea.subtree, eb.subtree, path + b"/")
            elif not ea.same_content(eb):
                if ea.type != eb.type and (ea.type == "dir" or eb.type == "dir"):
                    yield from _one_side(load, ea, prefix, REMOVED)
                    yield from _one_side(load, eb, prefix, ADDED)
                else:
                    yield Change(path, MODIFIED, ea, eb)
            elif not ea.same_metadata(eb):
                yield Change(path, METADATA, ea, eb)
            i += 1
            j += 1


def _one_side(
    load: Callable[[bytes], bytes], e: Entry, prefix: bytes, kind: str
) -> Iterator[Change]:
    path = prefix + e.name
    old, new = (e, None) if kind == REMOVED else (None, e)
    yield Change(path, kind, old, new)
    if e.type == "dir" and e.subtree is not None:
        sub_old, sub_new = (e.subtree, None) if kind == REMOVED else (None, e.subtree)
        yield from diff_trees(load, sub_old, sub_new, path + b"/")
