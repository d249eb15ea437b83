"""Paths in a tree: walk it, look a path up, read a file's bytes, filter and build trees.

The one place for these (the server, the agent, layers and restore use them). Pure
functions over two callables, so they run wherever trees can be read and written:
``load(id) -> bytes`` and ``put(kind, bytes) -> id``. Paths are absolute strings
(``/etc/hosts``), names decoded with ``surrogateescape``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

from lamina.errors import TooLargeError
from lamina.store.blob import BlobKind
from lamina.tree.model import Entry, decode_tree, encode_tree

Load = Callable[[bytes], bytes]
Put = Callable[[BlobKind, bytes], bytes]
#: (absolute path, entry) -> keep it
Keep = Callable[[str, Entry], bool]


def walk(load: Load, root: bytes | None, prefix: str = "") -> Iterator[tuple[str, Entry]]:
    """Every entry below ``root`` with its absolute path (``/etc/hosts``), parents first."""
    if root is None:
        return
    for e in decode_tree(load(root)):
        path = f"{prefix}/{e.name.decode(errors='surrogateescape')}"
        yield path, e
        if e.subtree is not None:
            yield from walk(load, e.subtree, path)


def index(load: Load, root: bytes | None) -> dict[str, Entry]:
    return dict(walk(load, root))


def lookup(load: Load, root: bytes | None, parts: Sequence[bytes]) -> Entry | None:
    """The entry at ``parts`` (path components) below ``root``; None when a component
    is missing or one before the last is not a folder. ``[]`` is not an entry: None."""
    tid = root
    found: Entry | None = None
    for i, part in enumerate(parts):
        if tid is None:
            return None
        found = next((e for e in decode_tree(load(tid)) if e.name == part), None)
        if found is None or (i < len(parts) - 1 and found.type != "dir"):
            return None
        tid = found.subtree
    return found


#: The most a merge reads of one file (text configuration, package databases).
MAX_READ = 64 * 1024 * 1024


def read_file(load: Load, e: Entry, limit: int = MAX_READ) -> bytes:
    """A file's bytes, its chunks and holes joined in order; a file whose content adds up to more than ``limit`` is refused
    before anything is allocated for it (a hole's size is endpoint-chosen)."""
    total = 0
    for c in e.content or []:
        total += c if isinstance(c, int) else 0
        if total > limit:
            break
    if total > limit or e.size > limit:
        raise TooLargeError(f"{e.name!r}: {max(total, e.size)} bytes, merges read at most {limit}")
    parts = []
    for c in e.content or []:
        part = b"\0" * c if isinstance(c, int) else load(c)
        total += len(part) if not isinstance(c, int) else 0
        if total > limit:
            raise TooLargeError(f"{e.name!r}: more than {limit} bytes, merges read at most {limit}")
        parts.append(part)
    return b"".join(parts)


def filter_tree(load: Load, put: Put, root: bytes, keep: Keep, prefix: str = "") -> bytes | None:
    """A copy of ``root`` holding only kept entries; a folder stays if kept or not empty.

    Returns None when nothing is kept.
    """
    out: list[Entry] = []
    for e in decode_tree(load(root)):
        path = f"{prefix}/{e.name.decode(errors='surrogateescape')}"
        if e.subtree is not None:
            sub = filter_tree(load, put, e.subtree, keep, path)
            if sub is not None:
                out.append(dataclasses.replace(e, subtree=sub))
            elif keep(path, e):
                out.append(dataclasses.replace(e, subtree=put(BlobKind.TREE, encode_tree([]))))
        elif keep(path, e):
            out.append(e)
    if not out:
        return None
    return put(BlobKind.TREE, encode_tree(out))


def build_tree(put: Put, files: dict[str, Entry], dirs: dict[str, Entry]) -> bytes:
    """A tree holding ``files`` at their paths; folders take their metadata from ``dirs``."""
    children: dict[str, dict[str, Entry]] = {"": {}}
    for path, e in sorted(files.items()):
        parts = path.strip("/").split("/")
        for i in range(len(parts) - 1):
            children.setdefault("/" + "/".join(parts[: i + 1]), {})
        parent = "/" + "/".join(parts[:-1]) if len(parts) > 1 else ""
        children.setdefault(parent, {})[parts[-1]] = dataclasses.replace(
            e, name=parts[-1].encode(errors="surrogateescape")
        )

    def make(d: str) -> bytes:
        entries = dict(children.get(d, {}))
        for sub in [k for k in children if k and k.rsplit("/", 1)[0] == d]:
            name = sub.rsplit("/", 1)[1]
            meta = dirs.get(sub) or Entry(name=b"x", type="dir", mode=0o755)
            entries[name] = dataclasses.replace(
                meta,
                name=name.encode(errors="surrogateescape"),
                type="dir",
                content=None,
                subtree=make(sub),
                size=0,
            )
        return put(BlobKind.TREE, encode_tree(list(entries.values())))

    return make("")


def remembering(load: Load, put: Put) -> tuple[Load, Put]:
    """``put`` that remembers the trees it writes, and ``load`` that reads them back
    before they reach the store (a writer's pack is stored only when it is flushed)."""
    written: dict[bytes, bytes] = {}

    def put2(kind: BlobKind, data: bytes) -> bytes:
        bid = put(kind, data)
        if kind == BlobKind.TREE:
            written[bid] = data
        return bid

    def load2(bid: bytes) -> bytes:
        data = written.get(bid)
        return data if data is not None else load(bid)

    return load2, put2


def selects(selected: Sequence[list[bytes]], rel: list[bytes], is_dir: bool) -> tuple[bool, bool]:
    """For an entry at ``rel`` (components) and paths ``selected`` (components; none:
    everything): (take this entry, take everything below it)."""
    if not selected:
        return True, True
    for sel in selected:
        n = min(len(sel), len(rel))
        if sel[:n] != rel[:n]:
            continue
        if len(rel) >= len(sel):
            return True, True
        if is_dir:
            return True, False
    return False, False


def missing_paths(load: Load, root: bytes, selected: Sequence[list[bytes]]) -> list[str]:
    """The paths of ``selected`` (components) that the tree ``root`` does not hold."""
    return [os.fsdecode(b"/".join(sel)) for sel in selected if lookup(load, root, sel) is None]
