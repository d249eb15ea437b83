"""The blob routes (``lamina.server.api.blobs``): what they hand the web server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from lamina.config import ServerSettings
from lamina.server.app import create_app
from lamina.store.blob import blob_id, decompress
from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve

CONTENT = b"a restored file's content " * 400


def test_blobs_read_hands_its_answer_over_from_the_packers_buffer(tmp_path: Path) -> None:
    """A ``/blobs/read`` answer goes to the web server as a view of msgpack's own buffer:
    ``msgpack.packb`` copied that buffer into a new ``bytes`` again, a second copy of
    every blob a restore reads (about 0.07 s of the server's CPU per GiB). The client
    reads the same msgpack, plaintext or as stored."""
    settings = ServerSettings(
        data=tmp_path / "data", port=free_port(), admin_password=ADMIN_PASSWORD
    )
    app = create_app(settings)
    bodies: list[object] = []

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        async def sending(message: Any) -> None:
            if message["type"] == "http.response.body" and scope["path"].endswith("/blobs/read"):
                bodies.append(message.get("body"))
            await send(message)

        await app(scope, receive, sending)

    for url in serve(settings, watched):  # type: ignore[arg-type]
        live = Live(url, settings.data)
        try:
            dev = live.device("desk")
            dev.commit_files({b"notes": [CONTENT]})
            chunk = blob_id(dev.id_key, CONTENT).hex()
            admin = live.login()
            r = admin.post("/blobs/read", json={"ids": [chunk]})
            assert r.status_code == 200 and msgpack.unpackb(r.content) == [CONTENT]
            r = admin.post("/blobs/read", json={"ids": [chunk], "stored": True})
            [(raw, flag, payload)] = msgpack.unpackb(r.content)
            assert r.status_code == 200 and decompress(flag, payload, raw) == CONTENT
        finally:
            for c in live.clients:
                c.close()
    assert len(bodies) == 2
    assert all(isinstance(b, memoryview) for b in bodies)


def test_blob_reads_are_matched_right_after_the_agents_routes(tmp_path: Path) -> None:
    """The router tries its routes in order (``_IncludedRouter`` by ``_IncludedRouter``,
    µs of the event loop's CPU each): a restore's ``/blobs/read`` requests, one per
    16 MiB job, were matched after seven other modules' routes (docs/design.md,
    "Restores (session 16)"). No other route may answer a blob path, so trying them
    earlier changes no answer."""
    from starlette.routing import Match

    app = create_app(ServerSettings(data=tmp_path / "data", admin_password="x" * 16))

    def tried(path: str) -> list[int]:
        scope = {"type": "http", "path": path, "method": "POST", "root_path": "", "headers": []}
        return [
            i + 1
            for i, r in enumerate(app.router.routes)
            if r.matches(dict(scope))[0] != Match.NONE
        ]

    (agent,) = tried("/api/v1/agent/config")
    for path in ("/api/v1/blobs/read", "/api/v1/blobs/delta", "/api/v1/blobs/trees"):
        assert tried(path) == [agent + 1], path
