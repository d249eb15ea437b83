"""Blobs the agent reads through the server, each re-hashed against its id."""

from __future__ import annotations

import msgpack

from lamina.agent.transport import AgentClient, retrying
from lamina.tree.sources import BatchedBlobs


def agent_blobs(client: AgentClient, id_key: bytes) -> BatchedBlobs:
    def fetch(ids: list[bytes]) -> list[bytes]:
        body = {"ids": [i.hex() for i in ids]}
        raw = retrying(lambda: client.raw("POST", "/blobs/read", json=body))
        out = msgpack.unpackb(raw, raw=False)
        return out if isinstance(out, list) else []

    return BatchedBlobs(fetch, id_key)
