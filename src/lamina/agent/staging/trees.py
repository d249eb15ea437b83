"""A layer delivery's folders, several to one answer (``POST /blobs/trees``, protocol 5).

A delivery's folders are small (the changed entries of each folder on the way to a
changed file) and alike: the same keys, owners and modes in each. Read one by one
through ``/blobs/read`` each is sent as stored, barely compressed; the server sends
them here in one zstd frame instead, a third of the bytes. Nothing is trusted for
being in that frame: each folder is hashed to the id it was asked as, and one that is
not is an ``IntegrityError`` before anything is staged. A server older than version
5 (or one that answers the route 404) is read through ``/blobs/read`` as before.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import partial

import msgpack
import zstandard

from lamina.agent.transport import AgentClient, retrying
from lamina.errors import IntegrityError, NotFoundError
from lamina.protocol import TREES_SINCE
from lamina.store import blob
from lamina.tree.sources import BatchedBlobs

#: Folders per request (``protocol.layers.TreesRequest``).
BATCH = 1024
#: The largest answer the agent inflates: the server's 32 MiB read limit and the framing.
MAX_ANSWER = 33 * 1024 * 1024
#: The answer's version (``server.services.deltas.TREES_VERSION``).
ANSWER_VERSION = 1


def _unpack(raw: bytes) -> list[bytes]:
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
    trees = doc.get("trees") if isinstance(doc, dict) and doc.get("v") == ANSWER_VERSION else None
    if not isinstance(trees, list) or not all(isinstance(t, bytes) for t in trees):
        raise IntegrityError("the server answered a folders request with something else")
    return trees


def fetch_trees(
    client: AgentClient, blobs: BatchedBlobs, ids: Collection[bytes], id_key: bytes
) -> bool:
    """Put the folders ``ids`` in ``blobs.local``, each hashed to its id. False when the
    server has no ``/blobs/trees`` (older than version 5, or 404): the caller reads them
    through ``blobs`` instead."""
    if client.server_protocol < TREES_SINCE:
        return False
    todo = list(dict.fromkeys(i for i in ids if i not in blobs.local))
    while todo:
        batch = todo[:BATCH]
        try:
            raw = retrying(
                partial(client.raw, "POST", "/blobs/trees", json={"ids": [i.hex() for i in batch]})
            )
        except NotFoundError:
            return False
        trees = _unpack(raw)
        if not trees or len(trees) > len(batch):
            raise IntegrityError(
                f"the server answered {len(trees)} folders for {len(batch)} asked: nothing was staged"
            )
        for bid, plain in zip(batch, trees, strict=False):
            if blob.blob_id(id_key, plain) != bid:
                raise IntegrityError(
                    f"the folder {bid.hex()} the server sent is another one: nothing was staged"
                )
            blobs.local[bid] = plain
            blobs.fetched_bytes += len(plain)
        todo = todo[len(trees) :]
    return True
