"""Settings of the programs. Only entry points (CLI commands) read them.

Each setting has one name in three places: the flag (``--tls-cert``), the environment
variable (``LAMINA_TLS_CERT``; the agent's are ``LAMINA_AGENT_...``) and the key of
the TOML file (``tls_cert = "/etc/lamina/server.crt"``): ``/etc/lamina/server.toml``
and ``/etc/lamina/agent.toml``, or the file ``--config`` names. The first that says
something wins: flag, then environment, then file, then the default
(``tests/test_config.py`` holds the order). An unknown key or a value of the wrong
type in the file is a one-line error naming the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lamina.errors import UsageError

SERVER_CONFIG = Path("/etc/lamina/server.toml")
AGENT_CONFIG = Path("/etc/lamina/agent.toml")
LOG_FORMATS = ("auto", "text", "journal", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

S = TypeVar("S", bound="FileSettings")


class FileSettings(BaseModel):
    """Settings read from flags, the environment and a TOML file, in that order.

    A plain pydantic model: the environment is read by :meth:`environment` (the
    prefix and the field's name, in any case, as pydantic-settings matched them), so a
    command that reads settings does not load pydantic-settings (and asyncio with it:
    about 70 ms of ``lamina agent run``'s start-up). Values from the environment and
    the file are validated as the flags are (lax: ``"5"`` is 5, ``"true"`` is true)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    #: The environment variables' prefix (``LAMINA_``, ``LAMINA_AGENT_``).
    env_prefix: ClassVar[str] = ""

    @classmethod
    def environment(cls) -> dict[str, str]:
        """The settings the environment gives: ``PREFIX + NAME`` in any case."""
        env = {k.lower(): v for k, v in os.environ.items()}
        found = {name: env.get(f"{cls.env_prefix}{name}".lower()) for name in cls.model_fields}
        return {name: v for name, v in found.items() if v is not None}

    @classmethod
    def load(cls: type[S], config: Path | None, default: Path, **flags: Any) -> S:
        """Settings from ``flags`` (those given: not None), the environment and the
        file ``config`` (or ``default`` when it exists)."""
        path = config if config is not None else (default if default.exists() else None)
        values = read_toml(path, set(cls.model_fields)) if path is not None else {}
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            return cls(**{**values, **cls.environment(), **given})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            origin = f" (in {path} or the environment)" if path else ""
            raise UsageError(f"setting {where}: {first.get('msg')}{origin}") from e


def read_toml(path: Path, known: set[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError as e:
        raise UsageError(f"no configuration file {path}") from e
    except OSError as e:
        raise UsageError(f"cannot read the configuration file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from e
    unknown = sorted(k for k in doc if k.replace("-", "_") not in known)
    if unknown:
        raise UsageError(
            f"unknown setting {unknown[0]!r} in {path} (known: {', '.join(sorted(known))})"
        )
    return {k.replace("-", "_"): v for k, v in doc.items()}


#: ``ServerSettings.bundle_memory``'s default.
BUNDLE_MEMORY = 128 * 1024 * 1024


class ServerSettings(FileSettings):
    env_prefix: ClassVar[str] = "LAMINA_"

    data: Path = Path("lamina-data")
    db: str | None = None
    store: str | None = None
    keyfile: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8470
    tls_cert: Path | None = None
    tls_key: Path | None = None
    admin_password: str | None = None
    #: Opens a sealed key file (``LAMINA_STORE_PASSPHRASE``).
    store_passphrase: str | None = None
    #: Failed logins per user name within ``login_window`` seconds before refusing.
    login_attempts: int = 5
    login_window: int = 300
    #: Largest request body accepted (a sync bundle).
    max_body: int = 64 * 1024 * 1024
    #: Bytes of sync bundles held in memory at once; bundles arriving past it wait in
    #: files under DATA/intake (docs/design.md, "Bundle bodies held in memory are
    #: bounded").
    bundle_memory: int = Field(default=BUNDLE_MEMORY, gt=0)
    #: Largest body of every other request (JSON), refused before authentication.
    max_json: int = 1024 * 1024
    #: Who may read /metrics: "loopback" (no token from this host, metrics.read from
    #: others), "token" (metrics.read always), "open", "off".
    metrics: Literal["loopback", "token", "open", "off"] = "loopback"
    #: Log lines on stderr: "auto" (journal when JOURNAL_STREAM is set, else text),
    #: "text", "journal" (``<N>`` priority prefixes, no timestamps), "json".
    log_format: Literal["auto", "text", "journal", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Cross-endpoint dedup: a blob a CVD does not hold counts as present for it once this
    #: many other CVDs hold it or are uploading it (in flight); 0 turns it off (each
    #: endpoint uploads what it lacks). Content fewer endpoints hold stays unconfirmable.
    share_threshold: int = Field(default=2, ge=0)
    #: Seconds a device's claim on a blob it was told to upload lasts without news from it.
    claim_lease: float = Field(default=120.0, gt=0)
    #: Bytes of file deltas (``/blobs/delta``) kept in DATA/deltas; the oldest go first.
    delta_cache: int = 1024 * 1024 * 1024


class AgentSettings(FileSettings):
    """The agent daemon's settings (``lamina agent run``)."""

    env_prefix: ClassVar[str] = "LAMINA_AGENT_"

    state: Path = Path("/var/lib/lamina")
    #: Seconds between cycles.
    poll: float = 15.0
    insecure: bool = False
    log_format: Literal["auto", "text", "journal", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
