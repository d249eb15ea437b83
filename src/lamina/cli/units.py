"""systemd units: written atomically, then (where systemd runs) reloaded and enabled.

``lamina agent install-service`` writes the agent's (``agent/service.py`` makes their
text); ``lamina server install-service`` writes the server's, made here: a unit that
runs ``lamina server`` with the given data folder, address and TLS files, and reads
its secrets (``LAMINA_ADMIN_PASSWORD``, ``LAMINA_STORE_PASSPHRASE``, ``AWS_*``, a
PostgreSQL URL with a password) from an environment file only root may read, never
from the unit itself (units are world-readable).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")
SERVER_UNIT = "lamina-server.service"
DEFAULT_ENV_FILE = Path("/etc/lamina/server.env")


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def lamina_command() -> str:
    """How systemd starts this Lamina: the ``lamina`` on PATH, or this Python's module."""
    return shutil.which("lamina") or f"{sys.executable} -m lamina.cli"


def write_units(
    units: dict[str, str], unit_dir: Path = UNIT_DIR, enable: bool = True
) -> list[Path]:
    """Write each unit (a temporary file renamed over the old one: never half a unit);
    under systemd, in the system's unit folder, reload and enable them."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units.items():
        path = unit_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        written.append(path)
    if enable and unit_dir == UNIT_DIR and systemd_running():
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", *units], check=True)
    return written


def server_unit(
    data: Path,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    self_signed: bool,
    env_file: Path,
    config: Path | None = None,
    user: str | None = None,
) -> dict[str, str]:
    """The server's unit. Paths are made absolute: systemd starts it from ``/``."""
    args = [
        "server",
        "--data",
        str(data.resolve()),
        "--host",
        host,
        "--port",
        str(port),
    ]
    if tls_cert is not None and tls_key is not None:
        args += ["--tls-cert", str(tls_cert.resolve()), "--tls-key", str(tls_key.resolve())]
    elif self_signed:
        args.append("--self-signed")
    if config is not None:
        args += ["--config", str(config.resolve())]
    exec_start = lamina_command() + " " + " ".join(shlex.quote(a) for a in args)
    user_lines = f"User={user}\nGroup={user}\n" if user else ""
    return {
        SERVER_UNIT: f"""[Unit]
Description=Lamina server: the central store, API and web console
Wants=network-online.target
After=network-online.target postgresql.service

[Service]
Type=simple
{user_lines}# Secrets (LAMINA_ADMIN_PASSWORD, LAMINA_STORE_PASSPHRASE, LAMINA_DB with a password,
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY): one VAR=value a line, mode 0600.
EnvironmentFile=-{env_file}
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=full
# Logs go to the journal: levels as <N> prefixes, no timestamps of their own.
SyslogIdentifier=lamina-server

[Install]
WantedBy=multi-user.target
"""
    }
