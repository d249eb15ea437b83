"""Finding 20: TLS between agent and server.

- plain http to a server that is not on loopback is refused unless ``--insecure``;
- ``--ca-cert`` checks the host name (a certificate the CA signed for another name is refused);
- ``lamina server --self-signed`` makes and keeps its pair, prints its fingerprint, and an
  agent enrolls against it with the pin (``--fingerprint``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import _log_excerpt, _stop_process
from tests.e2e.conftest import (
    ADMIN_PASSWORD,
    LAMINA,
    Lamina,
    close_lingering_connections,
    free_port,
    ready_probe,
)


class Server:
    """A `lamina server` process with the given options; waits for /health (any certificate)."""

    def __init__(self, data: Path, host: str, *extra: str) -> None:
        self.data, self.host, self.extra = data, host, extra
        self.port = free_port()
        self.tls = any(x in extra for x in ("--self-signed", "--tls-cert"))
        self.url = f"{'https' if self.tls else 'http'}://{host}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Server:
        self.starts += 1
        self.log = self.data.parent / f"server-{self.port}-{self.starts}.log"
        env = {**os.environ, "LAMINA_ADMIN_PASSWORD": ADMIN_PASSWORD}
        args = [*LAMINA, "server", "--data", str(self.data), "--host", self.host]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*args, "--port", str(self.port), *self.extra],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        any_cert = ssl.create_default_context()
        any_cert.check_hostname = False
        any_cert.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 60
        with ready_probe(any_cert) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"lamina server exited:\n{_log_excerpt(self.log)}")
                if probe(self.url):
                    return self
                time.sleep(0.05)
        raise RuntimeError(f"lamina server did not answer:\n{_log_excerpt(self.log)}")

    def stop(self) -> None:
        if self.proc:
            if self.tls:
                close_lingering_connections()
            _stop_process(self.proc)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def lan_address() -> str:
    """An address of this machine that is not loopback (skip when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            addr = str(s.getsockname()[0])
        except OSError:
            pytest.skip("no network interface besides loopback")
    if ipaddress.ip_address(addr).is_loopback:
        pytest.skip("no network interface besides loopback")
    return addr


def token_for(admin: Lamina, url: str, env: dict[str, str] | None = None) -> str:
    admin.env.update(env or {})
    admin.login(url)
    admin.run("policy", "create", "p")
    return str(admin.json("token", "create", "--policy", "p")["token"])


def enroll(
    agent: Lamina, url: str, token: str, tmp: Path, *extra: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """`lamina agent enroll` of a small endpoint under ``tmp``, state in ``tmp/state``."""
    root = tmp / "endpoint"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("desk-tls\n")
    args = ["--server", url, "--token", token, "--root", str(root), "--state", str(tmp / "state")]
    return agent.run("agent", "enroll", *args, *extra, ok=ok)


def refused(p: subprocess.CompletedProcess[str], tmp: Path) -> str:
    """The one-line error of a refused enrollment (which saved nothing)."""
    assert p.returncode != 0
    assert not (tmp / "state" / "agent.json").exists()
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1, err
    return err


def synced(agent: Lamina, tmp: Path) -> bool:
    out = agent.json("agent", "run", "--once", "--sync", "--state", str(tmp / "state"))
    return bool(out["synced"])


def test_plain_http_to_another_host_needs_insecure(
    person: Callable[[str], Lamina], tmp_path: Path, servers: list[Server]
) -> None:
    server = Server(tmp_path / "srv", lan_address()).start()
    servers.append(server)
    token = token_for(person("admin"), server.url)
    agent = person("agent")
    err = refused(enroll(agent, server.url, token, tmp_path, ok=False), tmp_path)
    assert "refusing plain http" in err and "--insecure" in err
    # The operator says so: enrollment works, and later runs keep that choice.
    enroll(agent, server.url, token, tmp_path, "--insecure")
    assert synced(agent, tmp_path)


def _ca(tmp: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Lamina CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = tmp / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def _issue(
    tmp: Path,
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path],
    label: str,
    names: list[x509.GeneralName],
) -> tuple[Path, Path]:
    ca_key, ca_cert, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    c, k = tmp / f"{label}.crt", tmp / f"{label}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


def test_ca_cert_checks_the_host_name(
    person: Callable[[str], Lamina], tmp_path: Path, servers: list[Server]
) -> None:
    ca = _ca(tmp_path)
    right = _issue(tmp_path, ca, "right", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    # Signed by the same CA, but for another name than the address the agent connects to.
    other = _issue(tmp_path, ca, "other", [x509.DNSName("other.lamina.invalid")])
    server = Server(
        tmp_path / "srv", "127.0.0.1", "--tls-cert", str(right[0]), "--tls-key", str(right[1])
    )
    servers.append(server.start())
    token = token_for(person("admin"), server.url, {"LAMINA_CA_CERT": str(ca[2])})
    agent = person("agent")
    server.stop()
    server.extra = ("--tls-cert", str(other[0]), "--tls-key", str(other[1]))
    server.start()
    p = enroll(agent, server.url, token, tmp_path, "--ca-cert", str(ca[2]), ok=False)
    err = refused(p, tmp_path)
    assert "127.0.0.1" in err and "certificate" in err.lower()
    # The certificate for the right name: accepted.
    server.stop()
    server.extra = ("--tls-cert", str(right[0]), "--tls-key", str(right[1]))
    server.start()
    enroll(agent, server.url, token, tmp_path, "--ca-cert", str(ca[2]))
    assert synced(agent, tmp_path)


def test_self_signed_server_is_reached_with_the_pin(
    person: Callable[[str], Lamina], tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "srv"
    server = Server(data, "127.0.0.1", "--self-signed").start()
    servers.append(server)
    log = server.log.read_text()
    match = re.search(r"SHA-256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})", log)
    assert match, log
    fp = match.group(1)
    cert, key = data / "tls/server.crt", data / "tls/server.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    presented = ssl.get_server_certificate(("127.0.0.1", server.port))
    assert presented.strip() == cert.read_text().strip()

    admin = person("admin")
    token = token_for(admin, server.url, {"LAMINA_CA_CERT": str(cert)})
    agent = person("agent")
    # A fingerprint that is not the server's: refused, nothing saved.
    wrong = ":".join(["00"] * 32)
    p = enroll(agent, server.url, token, tmp_path, "--fingerprint", wrong, ok=False)
    assert "fingerprint" in refused(p, tmp_path)
    # The printed fingerprint: enrolled and pinned.
    enroll(agent, server.url, token, tmp_path, "--fingerprint", fp)
    assert synced(agent, tmp_path)
    # The pair is kept: after a restart the same certificate (and fingerprint) is served.
    server.stop()
    server.start()
    assert fp in server.log.read_text()
    assert synced(agent, tmp_path)
