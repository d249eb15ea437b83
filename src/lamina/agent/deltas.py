"""New versions of files the endpoint holds an old version of, fetched as deltas.

For each file the agent would otherwise download chunks of, and whose old
version it has at the same path, it asks ``POST /blobs/delta`` with the chunk
ids of both versions. What a delta gives is cut with the store's chunker and
must give exactly the new version's chunk ids (taken from a tree the agent
verified): anything else is an ``IntegrityError`` and nothing is staged. The
verified chunks join the blob source's local chunks, so the restore that
follows reads them instead of downloading them. A server without the route
(protocol version 1) answers 404: then every file is fetched as chunks.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

import msgpack

from lamina.agent.transport import AgentClient, retrying
from lamina.errors import IntegrityError, NotFoundError
from lamina.store import blob
from lamina.store.chunker import Chunker
from lamina.store.delta import MAX_FILE, apply_delta
from lamina.store.keys import ChunkingSecret
from lamina.tree.sources import BatchedBlobs

#: Files per request (the server answers None past its answer limit).
BATCH = 16
#: Chunk ids per version the server accepts (``protocol.schemas.DeltaItem``).
MAX_IDS = 4096


@dataclass
class Candidate:
    """A file of the new tree and the endpoint's own old version at the same path."""

    path: str
    source: Path
    old_size: int
    old_ids: list[bytes]
    new_ids: list[bytes]
    size: int

    def missing_runs(self, have: Container[bytes]) -> list[list[bytes]]:
        """The runs of consecutive chunks of the new version not in ``have``: a delta
        gives a run alone (cut from its first chunk, a run cuts into the same chunks),
        so the unchanged chunks around a change are neither sent nor framed again."""
        runs: list[list[bytes]] = []
        last = False
        for i in self.new_ids:
            if i in have:
                last = False
            elif last:
                runs[-1].append(i)
            else:
                runs.append([i])
                last = True
        return runs

    def fits(self) -> bool:
        return (
            self.old_size <= MAX_FILE
            and self.size <= MAX_FILE
            and 0 < len(self.new_ids) <= MAX_IDS
            and len(self.old_ids) <= MAX_IDS
        )


def _read_old(c: Candidate, chunker: Chunker, id_key: bytes) -> bytes | None:
    """The old version again (not kept in memory meanwhile), if it is still the one asked for."""
    try:
        fd = os.open(c.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            data = f.read(MAX_FILE + 1)
    except OSError:
        return None
    if [blob.blob_id(id_key, v) for v in chunker.cut(data)] != c.old_ids:
        return None
    return data


def fetch_deltas(
    client: AgentClient, items: list[tuple[Candidate, list[bytes]]]
) -> list[bytes | None]:
    """One delta or None per (file, run of its new chunks); all None from a server
    without ``/blobs/delta``."""
    body = {
        "items": [
            {"base": [i.hex() for i in c.old_ids], "target": [i.hex() for i in run]}
            for c, run in items
        ]
    }
    try:
        raw = retrying(lambda: client.raw("POST", "/blobs/delta", json=body))
    except NotFoundError:
        return [None] * len(items)
    try:
        out = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise IntegrityError(f"the server's delta answer is not msgpack: {e}") from e
    deltas = out.get("deltas") if isinstance(out, dict) and out.get("v") == 1 else None
    if (
        not isinstance(deltas, list)
        or len(deltas) != len(items)
        or not all(d is None or isinstance(d, bytes) for d in deltas)
    ):
        raise IntegrityError("the server answered a delta request with something else")
    return deltas


def seed_by_deltas(
    client: AgentClient,
    blobs: BatchedBlobs,
    candidates: list[Candidate],
    chunking: ChunkingSecret,
) -> int:
    """Fetch deltas for the runs of chunks the candidates still lack; put their verified
    chunks in ``blobs.local``. Returns how many files came (in part) as deltas."""
    todo = [(c, run) for c in candidates if c.fits() for run in c.missing_runs(blobs.local)]
    chunker = Chunker(chunking)
    done: set[str] = set()
    for k in range(0, len(todo), BATCH):
        batch = todo[k : k + BATCH]
        for (c, run), delta in zip(batch, fetch_deltas(client, batch), strict=True):
            if delta is None:
                continue
            blobs.fetched_bytes += len(delta)
            old = _read_old(c, chunker, chunking.id_key)
            if old is None:
                continue  # changed since it was chunked: its chunks are fetched instead
            # A run is a part of the new version: at most its size.
            size = blob.frame_content_size(delta, f"the delta for /{c.path}")
            if not 0 <= size <= c.size:
                raise IntegrityError(
                    f"the delta for /{c.path} states {size} bytes, the file has {c.size}"
                )
            views = list(chunker.cut(apply_delta(old, delta, size)))
            ids = [blob.blob_id(chunking.id_key, v) for v in views]
            if ids != run:
                raise IntegrityError(
                    f"the delta for /{c.path} does not give the version the layer names "
                    "(its chunks differ): nothing was staged"
                )
            for bid, view in zip(ids, views, strict=True):
                blobs.local.setdefault(bid, bytes(view))
            done.add(c.path)
    return len(done)
