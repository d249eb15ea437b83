"""Blobs the agent reads through the server, each re-hashed against its id."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgpack

from lamina.agent.transport import AgentClient, retrying
from lamina.errors import IntegrityError
from lamina.store import blob


class AgentBlobs:
    """Blobs fetched through the server, each re-hashed here against its id."""

    def __init__(self, client: AgentClient, id_key: bytes) -> None:
        self.client = client
        self.id_key = id_key

    def get(self, bid: bytes) -> bytes:
        return next(self.get_many([bid]))

    def get_many(self, ids: Iterable[bytes]) -> Iterator[bytes]:
        batch: list[bytes] = []
        for bid in ids:
            batch.append(bid)
            if len(batch) >= 64:
                yield from self._fetch(batch)
                batch = []
        if batch:
            yield from self._fetch(batch)

    def _fetch(self, ids: list[bytes]) -> list[bytes]:
        raw = retrying(
            lambda: self.client.raw("POST", "/blobs/read", json={"ids": [i.hex() for i in ids]})
        )
        out = msgpack.unpackb(raw, raw=False)
        if not isinstance(out, list) or len(out) != len(ids):
            raise IntegrityError("the server answered a blob request with something else")
        for bid, data in zip(ids, out, strict=True):
            if not isinstance(data, bytes) or blob.blob_id(self.id_key, data) != bid:
                raise IntegrityError(f"blob {bid.hex()[:16]} from the server does not match its id")
        return out
