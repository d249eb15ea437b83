"""Settings of the programs. Only entry points (CLI commands) read them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAMINA_", extra="ignore")

    data: Path = Path("lamina-data")
    db: str | None = None
    store: str | None = None
    keyfile: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8470
    tls_cert: Path | None = None
    tls_key: Path | None = None
    admin_password: str | None = None
    #: Background task workers in this process (0: none, e.g. for tests of the API alone).
    workers: int = 1
    #: Failed logins per user name within ``login_window`` seconds before refusing.
    login_attempts: int = 5
    login_window: int = 300
    #: Largest request body accepted (a sync bundle).
    max_body: int = 64 * 1024 * 1024
    #: Largest body of every other request (JSON), refused before authentication.
    max_json: int = 1024 * 1024
    #: Who may read /metrics: "loopback" (no token from this host, metrics.read from
    #: others), "token" (metrics.read always), "open", "off".
    metrics: Literal["loopback", "token", "open", "off"] = "loopback"
