"""A folders answer (``POST /blobs/trees``, protocol version 5): its bytes, written by
the server (``encode``) and read by the agent (``unpack``, ``restore``); the one place
that says how they are laid out.

A delivery's folders are small and alike, and a folder's id is the hash of its
plaintext: the answer carries, breadth first, the folders asked for and those below
them, and leaves out each id of a later folder of the answer that a folder holds (the
device computes it). The device hashes the folders from the last to the first, puts
each hash where its links say, and must find the ids it asked for.

Answer (version 1)::

    zstd frame (content size in its header) of msgpack
    {"v": 1, "asked": N, "trees": [plaintext, ...], "links": [[tree, offset, child], ...]}

    asked  the first N trees are the first N ids asked for (a prefix: ask again for the rest)
    links  tree's bytes offset..offset+32 are zeroed; they are the id (keyed hash) of the
           restored tree number child, child > tree
"""

from __future__ import annotations

from typing import NamedTuple

import msgpack
import zstandard

from lamina.errors import IntegrityError
from lamina.store import blob
from lamina.tree.model import ID_SIZE

#: The answer's version.
VERSION = 1
#: The largest answer a device inflates: the server's 32 MiB read limit and the framing.
MAX_ANSWER = 33 * 1024 * 1024
#: Answers up to this size are compressed at level 19 (a delivery's folders: at most
#: ~80 ms), larger ones (a snapshot's walked by a revert) at level 9: 2% larger, 18 ms
#: a MiB instead of 340.
TIGHT = 256 * 1024

#: msgpack's header of a 32-byte bin: how an id sits in a folder.
ID_HEADER = b"\xc4" + bytes([ID_SIZE])


def _later_ids(plain: bytes, index: dict[bytes, int], t: int) -> list[tuple[int, int]]:
    """Where ``plain`` (tree number ``t``) holds, as a msgpack bin, the id of a later tree
    of the answer: (offset of the id, that tree's number). One pass over the tree, each
    place found once (none overlap): a tree of many sub-folders costs its length, not
    its length once per sub-folder. Any such 32 bytes may be left out, a sub-folder's id
    or not: the device puts back the same bytes (the later tree's id)."""
    places: list[tuple[int, int]] = []
    at = plain.find(ID_HEADER)
    while at >= 0:
        start = at + len(ID_HEADER)
        child = index.get(plain[start : start + ID_SIZE], -1)
        if child > t:
            places.append((start, child))
            at = plain.find(ID_HEADER, start + ID_SIZE)
        else:
            at = plain.find(ID_HEADER, at + 1)
    return places


def encode(asked: int, found: list[bytes], plains: list[bytes]) -> bytes:
    """The answer of the folders ``plains`` (their ids ``found``), the first ``asked``
    of them the ones asked for."""
    index = {bid: i for i, bid in enumerate(found)}
    links: list[list[int]] = []
    trees: list[bytes] = []
    for t, plain in enumerate(plains):
        buf = bytearray(plain)
        for at, child in _later_ids(plain, index, t):
            links.append([t, at, child])
            buf[at : at + ID_SIZE] = bytes(ID_SIZE)
        trees.append(bytes(buf))
    body = msgpack.packb(
        {"v": VERSION, "asked": asked, "trees": trees, "links": links}, use_bin_type=True
    )
    level = 19 if len(body) <= TIGHT else 9
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(body)


class Answer(NamedTuple):
    """``/blobs/trees``'s answer (``server.services.tree_answers``), checked for form."""

    asked: int
    trees: list[bytes]
    #: (tree, offset, child): tree's bytes offset..offset+32 are child's id
    links: list[tuple[int, int, int]]


def unpack(raw: bytes) -> Answer:
    size = blob.frame_content_size(raw, "the server's folders answer")
    if not 0 <= size <= MAX_ANSWER:
        raise IntegrityError(
            f"the server's folders answer states {size} bytes (at most {MAX_ANSWER})"
        )
    try:
        body = zstandard.ZstdDecompressor().decompress(raw, max_output_size=MAX_ANSWER)
        doc = msgpack.unpackb(body, raw=False)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as e:
        raise IntegrityError(f"the server's folders answer does not decode: {e}") from e
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise IntegrityError("the server answered a folders request with something else")
    trees, links, asked = doc.get("trees"), doc.get("links"), doc.get("asked")
    if (
        not isinstance(trees, list)
        or not all(isinstance(t, bytes) for t in trees)
        or type(asked) is not int
        or not 0 < asked <= len(trees)
        or not isinstance(links, list)
        or not all(
            isinstance(link, list)
            and len(link) == 3
            and all(type(n) is int for n in link)
            and 0 <= link[0] < link[2] < len(trees)
            and 0 <= link[1] <= len(trees[link[0]]) - ID_SIZE
            for link in links
        )
    ):
        raise IntegrityError("the server answered a folders request with something else")
    return Answer(asked, trees, [(t, at, c) for t, at, c in links])


def restore(answer: Answer, id_key: bytes) -> list[tuple[bytes, bytes]]:
    """Each folder with its id, hashed from the last to the first (a child comes after
    its parent), each child's id put back where its parent's links say."""
    plains = [bytearray(t) for t in answer.trees]
    into: dict[int, list[tuple[int, int]]] = {}
    for t, at, child in answer.links:
        into.setdefault(t, []).append((at, child))
    ids: list[bytes] = [b""] * len(plains)
    for t in reversed(range(len(plains))):
        for at, child in into.get(t, ()):
            plains[t][at : at + ID_SIZE] = ids[child]
        ids[t] = blob.blob_id(id_key, memoryview(plains[t]))
    return [(bid, bytes(p)) for bid, p in zip(ids, plains, strict=True)]
