"""`lamina server install-service` (and the agent's, through the same writer), and the
log formats of the long-running commands."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.cli.logs import (
    JournalFormatter,
    JsonFormatter,
    TextFormatter,
    resolve_format,
    setup_logging,
)
from lamina.errors import UsageError

LAMINA = [sys.executable, "-m", "lamina.cli"]


def lamina(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAMINA, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_server_install_service_writes_a_unit_with_tls_and_an_env_file(tmp_path: Path) -> None:
    units, env_file = tmp_path / "units", tmp_path / "etc" / "server.env"
    p = lamina(
        "server",
        "install-service",
        "--data",
        str(tmp_path / "data"),
        "--host",
        "0.0.0.0",
        "--tls-cert",
        str(tmp_path / "s.crt"),
        "--tls-key",
        str(tmp_path / "s.key"),
        "--env-file",
        str(env_file),
        "--unit-dir",
        str(units),
        "--config",
        str(tmp_path / "absent-is-fine.toml"),
    )
    assert p.returncode != 0 and "no configuration file" in p.stderr  # a named file must exist
    cfg = tmp_path / "server.toml"
    cfg.write_text('port = 8443\nmetrics = "token"\n')
    p = lamina(
        "server",
        "install-service",
        "--data",
        str(tmp_path / "data"),
        "--host",
        "0.0.0.0",
        "--tls-cert",
        str(tmp_path / "s.crt"),
        "--tls-key",
        str(tmp_path / "s.key"),
        "--env-file",
        str(env_file),
        "--unit-dir",
        str(units),
        "--config",
        str(cfg),
    )
    assert p.returncode == 0, p.stderr
    unit = (units / "lamina-server.service").read_text()
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert f"server --data {(tmp_path / 'data').resolve()} --host 0.0.0.0 --port 8443" in start
    assert (
        f"--tls-cert {(tmp_path / 's.crt').resolve()} --tls-key {(tmp_path / 's.key').resolve()}"
        in start
    )
    assert f"--config {cfg.resolve()}" in start
    assert f"EnvironmentFile=-{env_file}" in unit
    assert "WantedBy=multi-user.target" in unit and "Restart=on-failure" in unit
    # The secrets' file exists, empty, for root alone; the unit itself holds no secret.
    assert env_file.read_text() == ""
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "PASSWORD=" not in unit
    bad = lamina("server", "install-service", "--tls-cert", "x.crt", "--unit-dir", str(units))
    assert bad.returncode == 2 and "go together" in bad.stderr


def test_agent_install_service_uses_the_same_writer(tmp_path: Path) -> None:
    units = tmp_path / "units"
    p = lamina(
        "agent", "install-service", "--state", str(tmp_path / "st"), "--unit-dir", str(units)
    )
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in units.iterdir()) == [
        "lamina-agent-boot.service",
        "lamina-agent.service",
    ]


def record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("lamina.agent", level, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_journal_format_has_priorities_and_no_timestamps() -> None:
    f = JournalFormatter()
    assert f.format(record(logging.INFO, "cycle done")) == "<6>lamina.agent: cycle done"
    assert f.format(record(logging.WARNING, "a\nb")) == "<4>lamina.agent: a\n<4>b"
    assert f.format(record(logging.ERROR, "x")).startswith("<3>")


def test_text_and_json_formats() -> None:
    line = TextFormatter().format(record(logging.INFO, "hello"))
    assert line.endswith(" INFO lamina.agent: hello") and line[:4].isdigit()
    doc = json.loads(JsonFormatter().format(record(logging.INFO, "sync done", uploaded_bytes=5)))
    assert doc["level"] == "info" and doc["message"] == "sync done" and doc["uploaded_bytes"] == 5


def test_auto_is_journal_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert resolve_format("auto") == "text"
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert resolve_format("auto") == "journal"
    with pytest.raises(UsageError, match="unknown log format"):
        resolve_format("xml")


def test_verbose_and_quiet_levels() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        setup_logging("text", "info", verbose=True)
        assert root.level == logging.DEBUG
        setup_logging("text", "info", quiet=True)
        assert root.level == logging.WARNING
        setup_logging("json", "error")
        assert root.level == logging.ERROR
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        root.setLevel(saved[0])
        for h in saved[1]:
            root.addHandler(h)
