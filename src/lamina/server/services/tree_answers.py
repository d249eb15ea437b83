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
makes an asked id differ. The whole answer is one zstd frame, laid out by
``tree.folder_answers``.
"""

from __future__ import annotations

from collections.abc import Callable

from lamina.errors import IntegrityError
from lamina.server.services.blob_reads import READ_LIMIT
from lamina.tree import folder_answers
from lamina.tree.model import references

#: Folders one answer carries at most (the ones asked and those below them).
TREES_MAX = 4096

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
    """The answer of ``/blobs/trees`` (``tree.folder_answers``); without ``descend``
    only the folders asked for."""
    return folder_answers.encode(*folders_below(read, ids, descend))
