"""A loopback proxy between an agent and its server that holds the agent's uploads on cue.

Tests that interrupt an upload need the agent to be part-way through it when they strike;
a bandwidth limit and a poll leave that to luck. ``UploadGate`` forwards every request, and
once ``hold_after`` bytes of bundles have reached the server it holds the next bundle, and
every bundle after it, until the test says what to do with them: ``held`` is set at that
moment, so the test knows the agent is blocked mid-upload and that what came before has
been answered. Other requests (the progress reports) go on to the server until the test
calls ``freeze``, which holds every request from then on: nothing the agent sends meets a
server being killed.

The agent has up to two bundles in flight and reports its progress at most once a second
on a thread of its own (``agent/uploader.py``, ``agent/throttle.py``): a report of the
bundles answered before the held one may leave after it, and must still reach the server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

BUNDLES = "/api/v1/agent/bundles"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class UploadGate:
    def __init__(self, upstream: str, hold_after: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.hold_after = hold_after
        #: bytes of bundle bodies the server has answered
        self.forwarded = 0
        #: set when a bundle is held: the agent is blocked mid-upload
        self.held = threading.Event()
        self._decided = threading.Event()
        self._forward_held = False
        self._frozen = False
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=120)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def freeze(self) -> None:
        """Hold every request from now on, not only bundles, until ``release`` or ``drop``."""
        with self._lock:
            self._frozen = True

    def release(self) -> None:
        """Send what is held on (to a server that may have restarted) and hold no more."""
        self._forward_held = True
        self._decided.set()

    def drop(self) -> None:
        """Discard what is held (its agent is gone) and hold no more."""
        self._forward_held = False
        self._decided.set()

    def _should_hold(self, path: str) -> bool:
        """Hold the first bundle past ``hold_after`` and, until the test decides, every
        bundle after it, and after ``freeze`` every request."""
        with self._lock:
            if self._decided.is_set():
                return False
            if self._frozen:
                return True
            if path != BUNDLES:
                return False
            if self.held.is_set():
                return True
            if self.forwarded < self.hold_after:
                return False
            self.held.set()
            return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                if gate._should_hold(path):
                    gate._decided.wait()
                    if not gate._forward_held:
                        self.close_connection = True
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    with gate._http.stream(
                        self.command, gate.upstream + self.path, content=body, headers=headers
                    ) as r:
                        raw = b"".join(r.iter_raw())
                except httpx.TransportError:
                    # The server is down: the agent sees a dropped connection, as it would.
                    self.close_connection = True
                    return
                if path == BUNDLES and r.status_code < 400:
                    with gate._lock:
                        gate.forwarded += len(body)
                self.send_response(r.status_code)
                for k, v in r.headers.multi_items():
                    if k.lower() not in HOP_BY_HOP | {"server", "date"}:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _proxy

        return Handler

    @contextmanager
    def running(self) -> Iterator[UploadGate]:
        self._thread.start()
        try:
            yield self
        finally:
            self.drop()
            self._server.shutdown()
            self._server.server_close()
            self._http.close()
