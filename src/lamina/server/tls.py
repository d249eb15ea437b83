"""The server's own self-signed certificate (``lamina server --self-signed``).

Made once and kept in the data folder, so that its fingerprint -- what agents
pin at enrollment -- stays the same across restarts::

    DATA/tls/server.crt   PEM certificate (EC P-256, SHA-256, ten years)
    DATA/tls/server.key   PEM private key, PKCS#8, mode 0600

Its names (subject alternative names) are this machine's host name, the address
the server listens on, ``localhost`` and the loopback addresses, so an agent
that names it with ``--ca-cert`` checks the host name as with any CA.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lamina.errors import UsageError
from lamina.store.atomic import write_atomic

LIFETIME = dt.timedelta(days=3650)


def fingerprint(pem: str) -> str:
    """SHA-256 of a PEM certificate's DER encoding, as colon-separated upper-case hex."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError as e:
        raise UsageError(f"not a PEM certificate: {e}") from e
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def self_signed_pair(data: Path, host: str) -> tuple[Path, Path]:
    """The certificate and key under ``data/tls``, made on first use."""
    folder = data / "tls"
    cert, key = folder / "server.crt", folder / "server.key"
    if cert.exists() and key.exists():
        return cert, key
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    name = socket.gethostname() or "lamina"
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted({name, "localhost"})]
    addresses = {"127.0.0.1", "::1"}
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            addresses.add(host)
    except ValueError:
        if host not in (name, "localhost"):
            names.append(x509.DNSName(host))
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"lamina {name}")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(private, hashes.SHA256())
    )
    _write_new(
        key,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_new(cert, certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _write_new(path: Path, data: bytes) -> None:
    """Write owner-only under a temporary name, then rename: never half a file."""
    write_atomic(path, data, 0o600)
