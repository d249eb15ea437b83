"""The agent's HTTP client: bearer credential, retries, and the pinned server certificate.

Pinning: at enrollment over https the agent records the certificate the server
presented first (trust on first use, unless ``--ca-cert`` names the expected
one) and from then on trusts that certificate only — not the system's CAs.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from lamina.errors import BackendError, from_status

T = TypeVar("T")


def fetch_certificate(url: str) -> str | None:
    """The PEM certificate an https server presents (None for http)."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return None
    host = parts.hostname or "localhost"
    port = parts.port or 443
    try:
        return ssl.get_server_certificate((host, port), timeout=30)
    except OSError as e:
        raise BackendError(f"cannot reach {url} to read its certificate: {e}") from e


def pinned_context(pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the pin identifies the server, not its name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=pem)
    return ctx


class AgentClient:
    def __init__(
        self, server: str, credential: str | None, pinned_cert: str | None, timeout: float = 120
    ) -> None:
        verify: ssl.SSLContext | bool = pinned_context(pinned_cert) if pinned_cert else True
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.server = server.rstrip("/")
        self.http = httpx.Client(
            base_url=self.server + "/api/v1", headers=headers, verify=verify, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise BackendError(f"cannot reach the server at {self.server}: {e}") from e
        if r.status_code >= 400:
            try:
                message = str(r.json().get("message"))
            except ValueError:
                message = r.text[:200]
            raise from_status(r.status_code, message)
        return r

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self._call(method, path, **kw).json()

    def raw(self, method: str, path: str, **kw: Any) -> bytes:
        return self._call(method, path, **kw).content


def retrying(
    fn: Callable[[], T], attempts: int = 8, first_wait: float = 0.5, max_wait: float = 10
) -> T:
    """Call ``fn``, retrying while the server cannot be reached (it may be restarting)."""
    wait = first_wait
    for i in range(attempts):
        try:
            return fn()
        except BackendError:
            if i == attempts - 1:
                raise
            time.sleep(wait)
            wait = min(wait * 2, max_wait)
    raise AssertionError("unreachable")
