"""Finding 13(a): request bodies are capped before authentication, on every route.

The reproduction: a 150 MB anonymous ``/auth/login`` body was read whole into
the server's memory (peak RSS 173 -> 555 MiB) before anything looked at it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina.config import ServerSettings
from lamina.protocol.schemas import MAX_MAP_BYTES
from lamina.server.app import create_app
from tests.server.conftest import API, Live

MiB = 1024 * 1024
BIG = 150 * 1000 * 1000
PIECE = 64 * 1024


def _kernel_max(name: str) -> int:
    """The largest a TCP socket buffer may grow (the third number of tcp_rmem / tcp_wmem)."""
    return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])


def test_streamed_150mb_login_body_is_refused_after_the_limit(live: Live) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        piece = b"x" * PIECE
        while sent < BIG:
            sent += len(piece)
            yield piece

    # Chunked: no Content-Length, so the server has to count what arrives.
    r = live.client().post("/auth/login", content=body())
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    doc = r.json()
    assert doc["code"] == "too_large" and str(1024 * 1024) in doc["message"], doc
    # What the client managed to send is what the server read (at most the limit and
    # one piece) plus what the two kernels' socket buffers hold: not the 150 MB.
    bound = MiB + 2 * PIECE + _kernel_max("tcp_rmem") + _kernel_max("tcp_wmem")
    assert sent <= bound < BIG, (sent, bound)
    assert live.client().get("/health").status_code == 200


def test_declared_150mb_login_body_is_refused_before_it_is_sent(live: Live) -> None:
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            f"POST {API}/auth/login HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {BIG}\r\n\r\n".encode()
        )
        # Not one byte of the body is sent: the answer comes from the headers alone.
        answer = b""
        while part := s.recv(65536):
            answer += part
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"413", answer
    doc = json.loads(rest)
    assert doc["code"] == "too_large" and str(BIG) in doc["message"], doc


def test_the_app_pulls_no_more_than_the_limit(tmp_path: Path) -> None:
    """The application itself (ASGI, no network): how much of a 150 MB body it takes in."""
    app = create_app(ServerSettings(data=tmp_path / "data", admin_password="pw-12345678"))
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += PIECE
        return {"type": "http.request", "body": b"x" * PIECE, "more_body": pulled < BIG}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"{API}/auth/login",
        "raw_path": f"{API}/auth/login".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8470),
    }
    asyncio.run(app(scope, receive, send))
    assert pulled <= MiB + PIECE
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert json.loads(body)["code"] == "too_large"


OVER = MAX_MAP_BYTES + 1000  # JSON bytes past the bound


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/agent/config", {"state": "idle", "progress": {f"k{i}": i for i in range(300)}}),
        ("/agent/config", {"state": "idle", "progress": {"files": "x" * OVER}}),
        ("/agent/commit", {"root": "0" * 64, "files": 1, "bytes": 1, "stats": {"e": "x" * OVER}}),
        (
            "/agent/tasks/some-task",
            {"progress": 50, "result": {"e": ["x" * 1000] * (MAX_MAP_BYTES // 1000 + 2)}},
        ),
    ],
    ids=["progress-keys", "progress-bytes", "commit-stats", "task-result"],
)
def test_free_form_maps_are_bounded(live: Live, path: str, body: dict[str, Any]) -> None:
    dev = live.device("desk-maps")
    r = dev.client.post(path, json=body)
    assert r.status_code == 400, r.text
    doc = r.json()
    assert doc["code"] == "bad_request" and (
        "at most" in doc["message"] or "limit" in doc["message"]
    )
