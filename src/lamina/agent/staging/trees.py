"""A layer delivery's folders in one answer (``POST /blobs/trees``, protocol 5).

A delivery's folders are small (the changed entries of each folder on the way to a
changed file) and alike: the same keys, owners and modes in each. Read a level at a
time through ``/blobs/read`` each came as stored, barely compressed, with the ids of
its sub-folders (32 random bytes each). The server now sends the folders asked for and
those below them in one zstd frame, each sub-folder id it sends the folder of left out
(``server.services.tree_answers``; the bytes: ``tree.folder_answers``): the agent
hashes the folders from the last to the first, puts each id back, and must find the ids
it asked for. A folder's id covers its sub-folders' ids, so a wrong folder below an
asked one is an ``IntegrityError`` before anything is staged; a folder the server adds
that no asked one leads to is kept only under the id the agent computes for it. A server older than version 5 (or one that answers the route 404) is read
through ``/blobs/read`` as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from functools import partial

from lamina.agent.transport import AgentClient, retrying
from lamina.agent.treecache import TreeCache
from lamina.errors import IntegrityError, NotFoundError
from lamina.protocol import TREES_SINCE
from lamina.tree.folder_answers import restore, unpack
from lamina.tree.model import decode_tree
from lamina.tree.sources import BatchedBlobs

#: Folders per request (``protocol.layers.TreesRequest``).
BATCH = 1024

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
        answer = unpack(raw)
        if answer.asked > len(batch):
            raise IntegrityError(
                f"the server answered {answer.asked} folders for {len(batch)} asked: "
                "nothing was staged"
            )
        folders = restore(answer, id_key)
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
