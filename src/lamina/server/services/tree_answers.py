"""A delivery's folders for a device, the ones asked and those below them, in one answer
(``POST /blobs/trees``, protocol version 5).

A delivery's folders are small (the changed entries of each folder on the way to a
changed file) and alike (the same keys, owners, modes), and a folder's id is the hash
of its plaintext. So the answer carries, breadth first, the folders asked for and the
folders below them, and leaves out each sub-folder id the device can compute itself:
the 32 bytes of a sub-folder's id inside its parent are zeroed, and a link names the
later folder of the answer whose hash goes there. The device hashes the folders from
the last to the first, puts each hash where its links say, and must find the ids it
asked for: a parent's id covers its sub-folders' ids, so one wrong folder anywhere
makes an asked id differ. The whole answer is one zstd frame.

Answer (version 1)::

    zstd frame (content size in its header) of msgpack
    {"v": 1, "asked": N, "trees": [plaintext, ...], "links": [[tree, offset, child], ...]}

    asked  the first N trees are the first N ids asked for (a prefix: ask again for the rest)
    links  tree's bytes offset..offset+32 are zeroed; they are the id (keyed hash) of the
           restored tree number child, child > tree
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import zstandard

from lamina.errors import IntegrityError
from lamina.server.services.blob_reads import READ_LIMIT
from lamina.tree.model import ID_SIZE, references

#: The answer's version.
TREES_VERSION = 1
#: Folders one answer carries at most (the ones asked and those below them).
TREES_MAX = 4096
#: Answers up to this size are compressed at level 19 (a delivery's folders: at most
#: ~80 ms), larger ones (a snapshot's walked by a revert) at level 9: 2% larger, 18 ms
#: a MiB instead of 340.
TREES_TIGHT = 256 * 1024

#: msgpack's header of a 32-byte bin: how a sub-folder's id sits in its parent.
ID_HEADER = b"\xc4" + bytes([ID_SIZE])

#: Plaintexts of blobs by hex id, a prefix of them, checked as ``/blobs/read`` checks a
#: device's reads (``blob_reads.read_blobs``).
Read = Callable[[list[str]], list[bytes]]


def _subfolders(plain: bytes) -> list[bytes]:
    try:
        subs, _ = references(plain)
    except IntegrityError:
        return []  # not a folder: nothing below it
    return list(dict.fromkeys(subs))


def folders_below(
    read: Read, ids: list[str], descend: bool = True
) -> tuple[int, list[bytes], list[bytes]]:
    """The folders asked for (a prefix), then (with ``descend``) breadth first those below
    them, up to ``TREES_MAX`` folders and ``READ_LIMIT`` bytes: (how many were asked,
    their ids, their plaintexts)."""
    first = read(ids)
    found = [bytes.fromhex(h) for h in ids[: len(first)]]
    plains = list(first)
    size = sum(map(len, plains))
    seen = set(found)
    level = plains if descend else []
    while level and len(plains) < TREES_MAX and size < READ_LIMIT:
        below: list[bytes] = []
        for plain in level:
            below += [s for s in _subfolders(plain) if s not in seen]
            seen.update(below)
        below = below[: TREES_MAX - len(plains)]
        if not below:
            break
        level = []
        for bid, plain in zip(below, read([b.hex() for b in below]), strict=False):
            if size + len(plain) > READ_LIMIT:
                break
            found.append(bid)
            level.append(plain)
            size += len(plain)
        plains += level
    return len(first), found, plains


def pack_trees(read: Read, ids: list[str], descend: bool = True) -> bytes:
    """The answer of ``/blobs/trees`` (see the module's docstring); without ``descend``
    only the folders asked for."""
    asked, found, plains = folders_below(read, ids, descend)
    index = {bid: i for i, bid in enumerate(found)}
    links: list[list[int]] = []
    trees: list[bytes] = []
    for t, plain in enumerate(plains):
        buf = bytearray(plain)
        for sub in _subfolders(plain):
            child = index.get(sub, -1)
            if child <= t:
                continue  # not in the answer, or before it: the id stays
            at = buf.find(ID_HEADER + sub)
            while at >= 0:
                links.append([t, at + len(ID_HEADER), child])
                buf[at + len(ID_HEADER) : at + len(ID_HEADER) + ID_SIZE] = bytes(ID_SIZE)
                at = buf.find(ID_HEADER + sub, at + len(ID_HEADER) + ID_SIZE)
        trees.append(bytes(buf))
    body = msgpack.packb(
        {"v": TREES_VERSION, "asked": asked, "trees": trees, "links": links}, use_bin_type=True
    )
    level = 19 if len(body) <= TREES_TIGHT else 9
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(body)
