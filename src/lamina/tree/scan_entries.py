"""A rebuilt folder's entries, reused from its cache row where they still hold; the
files cache's hits checked against a store that collected garbage.

A folder whose listing changed (or whose sub-folder's tree did) is built again. Its
cache row keeps, for each entry other than a folder, the entry's row of the listing's
signature and its encoded bytes in the tree the row names (``cache.pack_entries``);
an entry whose signature row is the same now is taken as those bytes, with no files
row read, no ``Entry`` made and nothing encoded again. The signature row holds what
the entry is made of, or what moves with it (the ctime), exactly as for a whole
folder's reuse (``cache.signature_rows``); a row is trusted only when the cache's
epoch is the store's (no chunk it names can have been collected).

And the owners' and groups' names entries carry (``NameCache``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

import msgpack

from lamina.errors import IntegrityError
from lamina.tree.cache import CachedFile, FilesCache
from lamina.tree.model import TREE_VERSION, Entry
from lamina.tree.scan_read import BlobSink

#: ``encode_tree``'s bytes up to its entries' array header
_TREE_HEAD = msgpack.packb({"v": TREE_VERSION, "entries": []}, use_bin_type=True)[:-1]

Listed = tuple[bytes, os.stat_result, str]


class Reused:
    """The entries of a folder taken from its cache row."""

    def __init__(self) -> None:
        self.encoded: dict[bytes, bytes] = {}
        #: the regular files among them (their files rows hold, and stay)
        self.files: set[bytes] = set()
        self.bytes = 0
        self.others = 0


def cached_entries(
    cache: FilesCache, d: Any, rest: list[Listed], trust: bool
) -> tuple[list[Listed], Reused, dict[bytes, CachedFile], frozenset[bytes]]:
    """Split a folder's entries other than folders (``rest``; ``d.sigs`` their signature
    rows) into those its cache row still holds (with ``trust``: the row's listing may be
    reused, and the cache's epoch is the store's) and the others; the others' files rows,
    and the names of every files row the folder has."""
    reused = Reused()
    prev = cache.folder_entries(d.rel) if trust else None
    if prev is None:
        cached = cache.files(d.rel)
        return rest, reused, cached, frozenset(cached)
    misses: list[Listed] = []
    for item, row in zip(rest, d.sigs, strict=True):
        held = prev.get(item[0])
        if held is not None and held[0] == row:
            reused.encoded[item[0]] = held[1]
            if item[2] == "file":
                reused.files.add(item[0])
                reused.bytes += item[1].st_size
            else:
                reused.others += 1
        else:
            misses.append(item)
    cached = cache.files_named(d.rel, [n for n, _, typ in misses if typ == "file"])
    # The row was written by a clean build of the folder: its files rows are its files.
    held_files = {n for n, (row, _) in prev.items() if stat.S_ISREG(row[1])}
    return misses, reused, cached, frozenset(held_files | set(cached))


def encode_folder(
    entries: list[Entry], reused: dict[bytes, bytes]
) -> tuple[bytes, dict[bytes, bytes]]:
    """``encode_tree`` of ``entries`` and the ``reused`` encoded ones, and each entry's
    encoded bytes by name (the same bytes: an array's are its items' one after another)."""
    encoded = dict(reused)
    pack = msgpack.Packer(use_bin_type=True).pack  # one packer a folder, not one an entry
    for e in entries:
        encoded[e.name] = pack(e.encode())
    names = sorted(encoded)
    if len(names) != len(reused) + len(entries):
        raise IntegrityError("duplicate name in tree")
    n = len(names)
    if n < 16:
        head = bytes([0x90 | n])
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return _TREE_HEAD + head + b"".join(encoded[k] for k in names), encoded


def recheck_hits(
    writer: BlobSink, hits: list[tuple[bytes, Entry, os.stat_result, CachedFile]]
) -> list[tuple[bytes, Entry, os.stat_result]]:
    """The store collected garbage since the cache was written: the files whose chunks went
    are taken out of ``hits``, to be read again."""
    ids = {cid for _, e, _, _ in hits for cid in e.chunk_ids()}
    gone = writer.need(ids)
    if not gone:
        return []
    redo = []
    keep = []
    for h in hits:
        if any(cid in gone for cid in h[1].chunk_ids()):
            h[1].content = None
            redo.append((h[0], h[1], h[2]))
        else:
            keep.append(h)
    hits[:] = keep
    return redo


class NameCache(dict[int, str]):
    """A uid's or gid's name, asked of the system once per scan ("" for an id without one).

    A dict: a known id is a subscript (no Python call per entry); ``__missing__`` asks."""

    def __init__(self, lookup: Callable[[int], str]) -> None:
        super().__init__()
        self._lookup = lookup

    def __missing__(self, key: int) -> str:
        try:
            name = self._lookup(key)
        except KeyError:
            name = ""
        self[key] = name
        return name
