"""The clients' TLS contexts (``lamina.client_tls``): one per process for each trust
setting, never one setting's context for another."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from lamina.cli.client import Api
from lamina.errors import UsageError
from lamina.server.tls import self_signed_pair


def _context(api: Api) -> ssl.SSLContext:
    return api.http._transport._pool._ssl_context  # type: ignore[attr-defined,no-any-return]


def test_the_admin_clients_share_a_context_until_the_ca_bundle_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = self_signed_pair(tmp_path / "first", "127.0.0.1")
    second, _ = self_signed_pair(tmp_path / "second", "127.0.0.1")
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(first.read_bytes())
    monkeypatch.delenv("LAMINA_CA_CERT", raising=False)
    system = [_context(Api("http://127.0.0.1:9", None)) for _ in range(2)]
    assert system[0] is system[1]
    monkeypatch.setenv("LAMINA_CA_CERT", str(bundle))
    with_ca = [_context(Api("http://127.0.0.1:9", None)) for _ in range(2)]
    assert with_ca[0] is with_ca[1] and with_ca[0] is not system[0]
    assert with_ca[0].cert_store_stats()["x509"] == 1  # that CA only, not the system's
    # Another CA in the file (replaced, as an admin would): a context of its own.
    replaced = tmp_path / "ca.new"
    replaced.write_bytes(second.read_bytes())
    os.replace(replaced, bundle)
    after = _context(Api("http://127.0.0.1:9", None))
    assert after is not with_ca[0]
    assert after.cert_store_stats()["x509"] == 1
    # Another system CA folder: another context.
    monkeypatch.delenv("LAMINA_CA_CERT")
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert _context(Api("http://127.0.0.1:9", None)) is not system[0]


def test_a_ca_bundle_that_cannot_be_read_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMINA_CA_CERT", str(tmp_path / "missing.pem"))
    with pytest.raises(UsageError, match=r"cannot load the CA bundle .*missing\.pem"):
        Api("http://127.0.0.1:9", None)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    monkeypatch.setenv("LAMINA_CA_CERT", str(tmp_path / "junk.pem"))
    with pytest.raises(UsageError, match=r"cannot load the CA bundle .*junk\.pem"):
        Api("http://127.0.0.1:9", None)
