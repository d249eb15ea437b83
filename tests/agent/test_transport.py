"""Finding 20: plain http is refused unless the server is on loopback or ``--insecure`` is given."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.agent.transport import (
    AgentClient,
    certificate_refused,
    check_server_url,
    is_loopback,
    retrying,
)
from lamina.errors import BackendError, UsageError
from lamina.server.tls import self_signed_pair


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8470",
        "http://127.0.0.2:8470",
        "http://localhost:8470",
        "http://[::1]:8470",
        "https://lamina.example:8470",
        "https://192.0.2.7",
    ],
)
def test_allowed_without_insecure(url: str) -> None:
    check_server_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.7:8470",
        "http://lamina.example:8470",
        "http://10.0.0.1",
        "http://[2001:db8::1]:8470",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
    ],
)
def test_plain_http_to_another_host_is_refused(url: str) -> None:
    with pytest.raises(UsageError, match=r"refusing plain http.*--insecure") as e:
        check_server_url(url)
    assert "\n" not in str(e.value)
    check_server_url(url, insecure=True)
    # The client refuses it too (before any connection is made).
    with pytest.raises(UsageError, match="--insecure"):
        AgentClient(url, "lmd_x", None)
    AgentClient(url, "lmd_x", None, insecure=True).close()


@pytest.mark.parametrize("url", ["ftp://192.0.2.7", "192.0.2.7:8470", "https://", "http:///x"])
def test_not_a_server_url(url: str) -> None:
    with pytest.raises(UsageError, match="must be https://"):
        check_server_url(url, insecure=True)


def test_loopback_names_no_lookup() -> None:
    assert is_loopback("127.9.9.9") and is_loopback("::1") and is_loopback("LOCALHOST")
    assert not is_loopback("0.0.0.0") and not is_loopback("lamina") and not is_loopback("::")


@contextlib.contextmanager
def _tls_listener(cert: Path, key: Path) -> Iterator[int]:
    """A TLS server on a free loopback port that presents ``cert`` to every connection
    (and answers nothing); yields the port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                ctx.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        listener.close()
        thread.join(10)


def test_a_refused_certificate_is_not_retried(tmp_path: Path) -> None:
    """Another certificate than the pinned one: the call fails at once with one line naming
    the certificate, where an unreachable server is retried (it may be restarting)."""
    cert, key = self_signed_pair(tmp_path / "server", "127.0.0.1")
    pinned, _ = self_signed_pair(tmp_path / "impostor", "127.0.0.1")
    calls: list[int] = []
    with _tls_listener(cert, key) as port:
        client = AgentClient(f"https://127.0.0.1:{port}", "lmd_x", pinned.read_text())
        try:

            def health() -> object:
                calls.append(1)
                return client.json("GET", "/health")

            with pytest.raises(BackendError, match="certificate") as e:
                retrying(health, attempts=3, first_wait=0)
        finally:
            client.close()
    assert len(calls) == 1
    assert "\n" not in str(e.value)
    # A server that cannot be reached is retried (here all three attempts fail).
    calls.clear()
    unreachable = AgentClient(f"https://127.0.0.1:{port}", "lmd_x", pinned.read_text())
    try:

        def again() -> object:
            calls.append(1)
            return unreachable.json("GET", "/health")

        with pytest.raises(BackendError, match="cannot reach"):
            retrying(again, attempts=3, first_wait=0)
    finally:
        unreachable.close()
    assert len(calls) == 3


def _context(client: AgentClient) -> ssl.SSLContext:
    """The SSL context the client's connections are made with."""
    return client.http._transport._pool._ssl_context  # type: ignore[attr-defined,no-any-return]


def test_clients_share_one_context_per_trust_and_each_still_refuses_another_certificate(
    tmp_path: Path,
) -> None:
    """An agent makes one SSL context per pin (or CA) and process, not one per client; a
    client pinned to another certificate is still refused after a client with the right
    pin connected, and a pin is never taken for a CA (which checks the host name)."""
    cert, key = self_signed_pair(tmp_path / "server", "127.0.0.1")
    impostor, _ = self_signed_pair(tmp_path / "impostor", "127.0.0.1")
    pem = cert.read_text()
    with _tls_listener(cert, key) as port:
        url = f"https://127.0.0.1:{port}"
        pins = [pem, pem, impostor.read_text(), pem]
        clients = [AgentClient(url, "lmd_x", p) for p in pins]
        as_ca = AgentClient(url, "lmd_x", pem, ca=True)
        system = [AgentClient("http://127.0.0.1:9", None, None) for _ in range(2)]
        refused = []
        for c in clients:
            with pytest.raises(BackendError) as e:
                c.json("GET", "/health")  # the listener hangs up after the handshake
            refused.append(certificate_refused(e.value))
        for c in [*clients, as_ca, *system]:
            c.close()
    assert refused == [False, False, True, False]
    first, same, other, again = map(_context, clients)
    assert first is same is again and other is not first
    assert _context(as_ca) is not first and _context(as_ca).check_hostname
    assert not first.check_hostname and first.verify_mode == ssl.CERT_REQUIRED
    assert _context(system[0]) is _context(system[1])


def test_a_client_of_a_plain_http_server_loads_no_ca_bundle_and_trusts_no_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An http server's client never makes a handshake: it does not load the system's CA
    bundle (~40 ms of every http agent run) and its context, were it used, would refuse
    every certificate. An https client without a pin still trusts the system's CAs."""
    import lamina.agent.transport as transport

    loaded: list[str] = []
    system = transport.system_context
    monkeypatch.setattr(transport, "system_context", lambda: loaded.append("ca") or system())
    plain = AgentClient("http://127.0.0.1:9", "lmd_x", None)
    ctx = _context(plain)
    plain.close()
    assert loaded == []
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] == 0
    cert, key = self_signed_pair(tmp_path / "server", "127.0.0.1")
    with (
        _tls_listener(cert, key) as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    AgentClient("https://lamina.example", "lmd_x", None).close()
    assert loaded == ["ca"]
