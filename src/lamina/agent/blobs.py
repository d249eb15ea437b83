"""Blobs the agent reads through the server, each re-hashed against its id."""

from __future__ import annotations

from typing import Any

from lamina.agent.transport import AgentClient, retrying
from lamina.protocol import STORED_BLOBS_SINCE
from lamina.tree.sources import BatchedBlobs, http_blobs


def agent_blobs(client: AgentClient, id_key: bytes) -> BatchedBlobs:
    """Blobs as stored (inflated here) from a server that says it answers ``stored``,
    plaintext from an older one (or one not heard from yet)."""

    def post(path: str, body: Any) -> bytes:
        return retrying(lambda: client.raw("POST", path, json=body))

    return http_blobs(post, id_key, stored=client.server_protocol >= STORED_BLOBS_SINCE)
