"""Start-up: a command loads only its own group. ``lamina --help`` loads no Lamina
package but the CLI's, and the agent's commands (run on endpoints at boot) never load
the database, the server, the store commands, the HTTP client, Rich or the ciphers.
Deterministic: what is imported, not how long it takes (figures: ``python -m bench.startup``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: What none of the three start-up commands may load: the server's side, the other
#: command groups, and the heavy libraries only other commands need.
NEVER = {
    "sqlalchemy",
    "fastapi",
    "uvicorn",
    "alembic",
    "httpx",
    "rich",
    "cryptography",
    "lamina.db",
    "lamina.server",
    "lamina.layers",
    "lamina.protocol",
    "lamina.cli.store",
    "lamina.cli.snapshot",
    "lamina.cli.cvd",
    "lamina.cli.fleet",
    "lamina.cli.client",
    "lamina.cli.progress",
    "lamina.agent.runner",
    "lamina.agent.staging.stage",
    "lamina.agent.staging.migrate",
}


def imported(*args: str) -> set[str]:
    """The modules ``lamina ARGS`` imports (from ``python -X importtime``); it must exit 0."""
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lamina.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in p.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


@pytest.mark.parametrize("command", ["status", "boot"])
def test_the_agents_commands_load_no_database_server_or_store_command(
    tmp_path: Path, command: str
) -> None:
    state = {
        "server": "https://lamina.example",
        "device_id": "d",
        "credential": "lmd_x",
        "root": str(tmp_path),
        "chunker_seed": 1,
        "id_key": "00" * 32,
        "min_size": 1,
        "avg_size": 2,
        "max_size": 4,
        "version": 2,
    }
    (tmp_path / "agent.json").write_text(json.dumps(state))
    mods = imported("agent", command, "--state", str(tmp_path))
    assert "lamina.agent.staging" in mods  # the command ran
    assert not NEVER & mods


def test_help_loads_no_command_group() -> None:
    mods = imported("--help")
    assert {m for m in mods if m.startswith("lamina.")} <= {
        "lamina.cli",
        "lamina.cli.output",
        "lamina.errors",
    }
    assert not NEVER & mods
