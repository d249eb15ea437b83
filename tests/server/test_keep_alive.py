"""An idle keep-alive connection outlives the clients' own expiry."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from tests.server.conftest import Live

REQUEST = b"GET /api/v1/health HTTP/1.1\r\nHost: lamina\r\n\r\n"


def answer(sock: socket.socket) -> bytes:
    got = b""
    while b"\r\n\r\n" not in got:
        part = sock.recv(4096)
        if not part:
            return got  # the server closed the connection
        got += part
    head, _, body = got.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_a_connection_idle_past_the_clients_expiry_still_answers(live: Live) -> None:
    # httpx drops its idle connections after 5 s; a server that closed them after the same
    # time would race a client reusing one (a request lost as "Server disconnected").
    url = urlsplit(live.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(REQUEST)
        assert answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # past uvicorn's default keep-alive (5 s), which closes it
        sock.sendall(REQUEST)
        assert answer(sock).startswith(b"HTTP/1.1 200")
