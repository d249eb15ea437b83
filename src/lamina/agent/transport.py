"""The agent's HTTP client: bearer credential, retries, and how the server is trusted.

Plain ``http://`` is refused unless the server is on a loopback address or the
operator said ``--insecure``: over http an on-path attacker reads the
credential and every upload, and can queue tasks that run as root.

Over https the server is trusted in one of two ways, fixed at enrollment:

* **a CA** (``--ca-cert``): the certificate must be signed by that CA *and* name
  the host the agent connects to (``check_hostname``);
* **a pin** (no ``--ca-cert``; a self-signed server): the agent records the
  certificate the server presents at enrollment -- checked against
  ``--fingerprint`` (SHA-256) when given, else trusted on first use -- and from
  then on trusts that certificate only, not the system's CAs, whatever its names.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from lamina.client_tls import system_context
from lamina.errors import AuthError, BackendError, UsageError, from_status
from lamina.protocol import UNNAMED_VERSION

T = TypeVar("T")


def check_server_url(url: str, insecure: bool = False) -> None:
    """Refuse a server URL the agent must not talk to: not http(s), or plain http to a
    host that is not a loopback address (unless ``insecure``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"the server URL must be https://HOST[:PORT], got {url!r}")
    if parts.scheme == "http" and not insecure and not is_loopback(parts.hostname):
        raise UsageError(
            f"refusing plain http to {parts.hostname}: credentials and backups would cross the "
            "network unencrypted; use https (lamina server --self-signed or --tls-cert), "
            "or pass --insecure"
        )


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); no name is looked up."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def fetch_certificate(url: str, fingerprint: str | None = None) -> str | None:
    """The PEM certificate an https server presents (None for http). With ``fingerprint``
    (SHA-256, hex, colons optional) a certificate with another fingerprint is refused."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        if fingerprint:
            raise UsageError("--fingerprint is for an https server")
        return None
    host = parts.hostname or "localhost"
    port = parts.port or 443
    try:
        pem = ssl.get_server_certificate((host, port), timeout=30)
    except OSError as e:
        raise BackendError(f"cannot reach {url} to read its certificate: {e}") from e
    if fingerprint is not None:
        want = fingerprint.replace(":", "").strip().lower()
        got = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
        if not hmac.compare_digest(want, got):
            raise AuthError(
                f"the server at {host}:{port} presents a certificate with SHA-256 fingerprint "
                f"{got}, not the expected {want}: refusing to enroll"
            )
    return pem


@functools.lru_cache(maxsize=8)
def pinned_context(pem: str) -> ssl.SSLContext:
    """Trust the one certificate ``pem``, whatever its names (one context per pin and process)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the pin identifies the server, not its name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=pem)
    return ctx


@functools.cache
def no_tls_context() -> ssl.SSLContext:
    """The context of a client of a plain-http server: it trusts no certificate at all.

    The client's requests all go to its ``http://`` base (redirects are not followed), so
    no handshake ever uses it; were one made, it would fail. Loading the system's CA
    bundle for it (``system_context``) cost an http agent ~40 ms of CPU per run."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname, CERT_REQUIRED, no CA


@functools.lru_cache(maxsize=8)
def ca_context(pem: str) -> ssl.SSLContext:
    """Trust certificates signed by the CA(s) in ``pem`` for the host name connected to
    (one context per CA and process)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the CA may be an intermediate
    try:
        ctx.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as e:
        raise UsageError(f"the CA certificate is not a PEM certificate: {e}") from e
    return ctx


class AgentClient:
    """The agent's connection to its server.

    ``pinned_cert`` is the PEM the agent trusts: a CA's certificate when ``ca`` is
    true (the host name is checked), else the server's own certificate (a pin).
    """

    def __init__(
        self,
        server: str,
        credential: str | None,
        pinned_cert: str | None,
        timeout: float = 120,
        *,
        ca: bool = False,
        insecure: bool = False,
    ) -> None:
        check_server_url(server, insecure)
        if urlsplit(server).scheme == "http":
            verify = no_tls_context()  # never used: no request leaves ``server``
        elif not pinned_cert:
            verify = system_context()
        else:
            verify = ca_context(pinned_cert) if ca else pinned_context(pinned_cert)
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.server = server.rstrip("/")
        #: Response body bytes as they came over the wire (before any content decoding).
        self.received_bytes = 0
        #: The protocol version the server says it speaks (its agent config's ``protocol``,
        #: set at each report); a version-2 server says none.
        self.server_protocol = UNNAMED_VERSION
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
        self.received_bytes += r.num_bytes_downloaded
        if r.status_code >= 400:
            code: str | None = None
            try:
                doc = r.json()
                message = str(doc.get("message"))
                code = str(doc.get("code"))
            except (ValueError, AttributeError):
                message = r.text[:200]
            raise from_status(r.status_code, message, code)
        return r

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self._call(method, path, **kw).json()

    def raw(self, method: str, path: str, **kw: Any) -> bytes:
        return self._call(method, path, **kw).content


def certificate_refused(error: BaseException) -> bool:
    """True when ``error`` comes from a TLS handshake that refused the server's certificate
    (another certificate than the pinned one, or not for this host name)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def retrying(
    fn: Callable[[], T], attempts: int = 8, first_wait: float = 0.5, max_wait: float = 10
) -> T:
    """Call ``fn``, retrying while the server cannot be reached (it may be restarting).
    A certificate the agent does not trust fails at once: waiting does not change it."""
    wait = first_wait
    for i in range(attempts):
        try:
            return fn()
        except BackendError as e:
            if i == attempts - 1 or certificate_refused(e):
                raise
            time.sleep(wait)
            wait = min(wait * 2, max_wait)
    raise AssertionError("unreachable")
