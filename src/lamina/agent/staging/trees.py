"""A layer delivery's folders in one answer (``POST /blobs/trees``, protocol 5).

A delivery's folders are small (the changed entries of each folder on the way to a
changed file) and alike: the same keys, owners and modes in each. Read a level at a
time through ``/blobs/read`` each came as stored, barely compressed, with the ids of
its sub-folders (32 random bytes each). The server now sends the folders asked for and
those below them in one zstd frame, each sub-folder id it sends the folder of left out
(``server.services.tree_answers``): the agent hashes the folders from the last to the
first, puts each id back, and must find the ids it asked for. A folder's id covers its
sub-folders' ids, so one wrong folder anywhere is an ``IntegrityError`` before anything
is staged. A server older than version 5 (or one that answers the route 404) is read
through ``/blobs/read`` as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from functools import partial
from typing import NamedTuple

import msgpack
import zstandard

from lamina.agent.transport import AgentClient, retrying
from lamina.agent.treecache import TreeCache
from lamina.errors import IntegrityError, NotFoundError
from lamina.protocol import TREES_SINCE
from lamina.store import blob
from lamina.tree.model import ID_SIZE, decode_tree
from lamina.tree.sources import BatchedBlobs

#: Folders per request (``protocol.layers.TreesRequest``).
BATCH = 1024
#: The largest answer the agent inflates: the server's 32 MiB read limit and the framing.
MAX_ANSWER = 33 * 1024 * 1024
#: The answer's version (``server.services.deltas.TREES_VERSION``).
ANSWER_VERSION = 1


class Answer(NamedTuple):
    """``/blobs/trees``'s answer (``server.services.tree_answers``), checked for form."""

    asked: int
    trees: list[bytes]
    #: (tree, offset, child): tree's bytes offset..offset+32 are child's id
    links: list[tuple[int, int, int]]


def _unpack(raw: bytes) -> Answer:
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
    if not isinstance(doc, dict) or doc.get("v") != ANSWER_VERSION:
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


def _restore(answer: Answer, id_key: bytes) -> list[tuple[bytes, bytes]]:
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


#: Where a fetched folder goes (its id computed by the agent), and whether one is held.
Keep = Callable[[bytes, bytes], None]
Held = Callable[[bytes], bool]


def fetch_trees(
    client: AgentClient,
    ids: Collection[bytes],
    id_key: bytes,
    keep: Keep,
    held: Held,
    *,
    below: bool = True,
) -> bool:
    """``keep`` the folders ``ids`` not ``held`` and, with ``below``, as many of the
    folders below them as the server sends, each under its hash, the ones asked for
    checked against their ids. False when the server has no ``/blobs/trees`` (older than
    version 5, or 404): the caller reads them another way."""
    if client.server_protocol < TREES_SINCE:
        return False
    todo = list(dict.fromkeys(i for i in ids if not held(i)))
    while todo:
        batch = todo[:BATCH]
        body = {"ids": [i.hex() for i in batch], "below": below}
        try:
            raw = retrying(partial(client.raw, "POST", "/blobs/trees", json=body))
        except NotFoundError:
            return False
        answer = _unpack(raw)
        if answer.asked > len(batch):
            raise IntegrityError(
                f"the server answered {answer.asked} folders for {len(batch)} asked: "
                "nothing was staged"
            )
        folders = _restore(answer, id_key)
        for want, (bid, _) in zip(batch, folders[: answer.asked], strict=False):
            if bid != want:
                raise IntegrityError(
                    f"the folder {want.hex()} the server sent is another one: nothing was staged"
                )
        for bid, plain in folders:
            if not held(bid):
                keep(bid, plain)
        todo = [i for i in todo[answer.asked :] if not held(i)]
    return True


def into_blobs(blobs: BatchedBlobs) -> Keep:
    """Keep folders in ``blobs.local`` (a delivery's: small), counted as fetched."""

    def keep(bid: bytes, plain: bytes) -> None:
        blobs.local[bid] = plain
        blobs.fetched_bytes += len(plain)

    return keep


def fetch_walk(
    client: AgentClient,
    tree: bytes,
    id_key: bytes,
    cache: TreeCache,
    descend: Callable[[str], bool],
) -> bool:
    """Every folder of ``tree`` a staging's plan reads (below the paths ``descend``
    keeps), a level at a time, up to ``BATCH`` folders a request, into ``cache``. False
    (and nothing more fetched) from a server without ``/blobs/trees``."""
    level = [(tree, "")]
    while level:
        ids = [t for t, _ in level]
        if not fetch_trees(client, ids, id_key, cache.keep, cache.holds, below=False):
            return False
        nxt: list[tuple[bytes, str]] = []
        for tid, rel in level:
            for e in decode_tree(cache.tree(tid)):
                child = f"{rel}/{os.fsdecode(e.name)}" if rel else os.fsdecode(e.name)
                if e.subtree is not None and descend(child):
                    nxt.append((e.subtree, child))
        level = nxt
    return True
