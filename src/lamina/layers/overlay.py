"""A tree with some paths replaced: only the folders on the way to them are rewritten.

Used to lay driver packs over a CVD's snapshot when a migration lays its system
down on new hardware: everything else of the snapshot (empty folders, special
files, metadata) is kept entry for entry.
"""

from __future__ import annotations

import dataclasses

from lamina.store.blob import BlobKind
from lamina.tree.model import Entry, decode_tree, encode_tree
from lamina.tree.paths import Load, Put


def _name(s: str) -> bytes:
    return s.encode(errors="surrogateescape")


def overlay(
    load: Load,
    put: Put,
    root: bytes,
    files: dict[str, Entry],
    dirs: dict[str, Entry],
    drop: frozenset[str] = frozenset(),
) -> bytes:
    """``root`` with ``files`` (absolute paths) put in place and the paths in ``drop``
    taken out; a missing folder on the way takes its metadata from ``dirs`` (else 0755,
    root's)."""
    by_dir: dict[str, dict[str, Entry]] = {}
    dropped: dict[str, set[bytes]] = {}
    touched: set[str] = {""}
    for path in [*files, *drop]:
        parent, _, name = path.rstrip("/").rpartition("/")
        if path in files:
            by_dir.setdefault(parent, {})[name] = files[path]
        else:
            dropped.setdefault(parent, set()).add(_name(name))
        parts = parent.strip("/").split("/") if parent else []
        touched.update("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))

    def make(tree_id: bytes | None, d: str) -> bytes:
        entries = {e.name: e for e in decode_tree(load(tree_id))} if tree_id else {}
        for gone in dropped.get(d, ()):
            entries.pop(gone, None)
        for fname, e in by_dir.get(d, {}).items():
            entries[_name(fname)] = dataclasses.replace(e, name=_name(fname))
        for t in touched:
            if not t or t.rpartition("/")[0] != d:
                continue
            dname = _name(t.rpartition("/")[2])
            cur = entries.get(dname)
            is_dir = cur is not None and cur.type == "dir"
            meta = cur if is_dir and cur is not None else dirs.get(t)
            meta = meta or Entry(name=dname, type="dir", mode=0o755)
            entries[dname] = dataclasses.replace(
                meta,
                name=dname,
                type="dir",
                content=None,
                size=0,
                subtree=make(cur.subtree if is_dir and cur is not None else None, t),
            )
        return put(BlobKind.TREE, encode_tree(list(entries.values())))

    return make(root, "")
