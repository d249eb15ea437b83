"""Policies (versions, retention after every sync), TLS pinning, and the agent's systemd units."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli.corpus import make_tree
from tests.e2e.conftest import Deployment, Lamina, ServerProc


def test_policy_change_and_retention(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run(
        "policy",
        "create",
        "tight",
        "--keep-last",
        "2",
        "--keep-hourly",
        "0",
        "--keep-daily",
        "0",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
        "--exclude",
        "/secret/**",
    )
    token = admin.json("token", "create", "--policy", "tight")["token"]
    root = make_tree(tmp_path / "ep", small=30, large_mb=1)
    (root / "secret").mkdir()
    (root / "secret/key.pem").write_text("never uploaded\n")
    state = tmp_path / "state"
    agent = person("agent")
    agent.run(
        "agent",
        "enroll",
        "--server",
        embedded.url,
        "--token",
        token,
        "--root",
        str(root),
        "--state",
        str(state),
    )
    for i in range(4):
        (root / "etc/app/counter").write_text(str(i))
        agent.run("agent", "run", "--once", "--sync", "--state", str(state))
    [cvd] = admin.json("cvd", "list")
    snaps = admin.json("cvd", "snapshots", cvd["id"])
    assert len(snaps) == 2  # retention ran after every sync
    top = {e["name"] for e in admin.json("cvd", "ls", cvd["id"])}
    assert "etc" in top and "secret" not in top  # excluded by the policy
    assert cvd["policy_version"] == 1
    updated = admin.json("policy", "update", "tight", "--keep-last", "3")
    assert updated["version"] == 2 and updated["settings"]["exclude"] == ["/secret/**"]
    assert admin.json("cvd", "show", cvd["id"])["policy_version"] == 2  # the CVD moved with it
    (root / "etc/app/counter").write_text("again")
    agent.run("agent", "run", "--once", "--sync", "--state", str(state))
    assert len(admin.json("cvd", "snapshots", cvd["id"])) == 3


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    c, k = tmp / f"{name}.crt", tmp / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


def test_agent_pins_the_server_certificate(person: Callable[[str], Lamina], tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "lamina-a")
    server = ServerProc(tmp_path / "srv", [], tls=(cert, key)).start()
    try:
        admin = person("admin")
        admin.env["LAMINA_CA_CERT"] = str(cert)
        admin.login(server.url)
        admin.run("policy", "create", "p")
        token = admin.json("token", "create", "--policy", "p")["token"]
        root = make_tree(tmp_path / "ep", small=10, large_mb=1)
        state = tmp_path / "state"
        agent = person("agent")
        # No CA is configured for the agent: it trusts the certificate it first sees, and only that.
        agent.run(
            "agent",
            "enroll",
            "--server",
            server.url,
            "--token",
            token,
            "--root",
            str(root),
            "--state",
            str(state),
        )
        agent.run("agent", "run", "--once", "--state", str(state))
        assert admin.json("cvd", "list")[0]["snapshots"] == 1
        # Another server answers on that address with another certificate: the agent refuses.
        server.stop()
        server.tls = _self_signed(tmp_path, "impostor")
        server.start()
        p = agent.run("agent", "run", "--once", "--sync", "--state", str(state), ok=False)
        assert p.returncode != 0 and "certificate" in p.stderr.lower()
        assert len(p.stderr.strip().splitlines()) == 1
    finally:
        server.stop()


def test_install_service_writes_units(person: Callable[[str], Lamina], tmp_path: Path) -> None:
    units = tmp_path / "units"
    state = tmp_path / "state"
    agent = person("agent")
    agent.run("agent", "install-service", "--state", str(state), "--unit-dir", str(units))
    boot = (units / "lamina-agent-boot.service").read_text()
    daemon = (units / "lamina-agent.service").read_text()
    assert f"agent boot --state {state.resolve()}" in boot
    assert "DefaultDependencies=no" in boot and "Before=sysinit.target" in boot
    assert "WantedBy=sysinit.target" in boot
    assert f"agent run --state {state.resolve()}" in daemon and "Restart=always" in daemon
    assert "After=network-online.target lamina-agent-boot.service" in daemon
