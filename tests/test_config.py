"""Settings: flag > environment > file > default, one name in the three places; a bad
file is a one-line error naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lamina.config import AgentSettings, ServerSettings
from lamina.errors import UsageError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_flag_env_file_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(
        tmp_path / "server.toml",
        'host = "0.0.0.0"\nport = 9000\nmetrics = "token"\ntls-cert = "/etc/lamina/s.crt"\n',
    )
    missing = tmp_path / "absent.toml"
    # The file over the defaults.
    s = ServerSettings.load(cfg, missing)
    assert (s.host, s.port, s.metrics) == ("0.0.0.0", 9000, "token")
    assert s.tls_cert == Path("/etc/lamina/s.crt")  # a flag's spelling works as a key too
    # The environment over the file.
    monkeypatch.setenv("LAMINA_PORT", "9100")
    assert ServerSettings.load(cfg, missing).port == 9100
    # A flag over both; a flag not given (None) leaves the others alone.
    s = ServerSettings.load(cfg, missing, port=9200, host=None)
    assert (s.port, s.host) == (9200, "0.0.0.0")


def test_default_file_is_read_only_when_present(tmp_path: Path) -> None:
    default = tmp_path / "server.toml"
    assert ServerSettings.load(None, default).port == 8470
    write(default, "port = 8500\n")
    assert ServerSettings.load(None, default).port == 8500


def test_agent_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "agent.toml", 'state = "/srv/agent"\npoll = 60\nlog_format = "json"\n')
    a = AgentSettings.load(cfg, tmp_path / "absent")
    assert (a.state, a.poll, a.log_format) == (Path("/srv/agent"), 60.0, "json")
    monkeypatch.setenv("LAMINA_AGENT_POLL", "5")
    assert AgentSettings.load(cfg, tmp_path / "absent").poll == 5.0
    assert AgentSettings.load(cfg, tmp_path / "absent", poll=1.0).poll == 1.0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("prot = 1\n", "unknown setting 'prot'"),
        ("port = [\n", "is not valid TOML"),
        ('port = "many"\n', "setting port"),
        ('metrics = "everyone"\n', "setting metrics"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, says: str) -> None:
    cfg = write(tmp_path / "server.toml", text)
    with pytest.raises(UsageError, match=says) as e:
        ServerSettings.load(cfg, tmp_path / "absent")
    assert "\n" not in e.value.message.strip() or "TOML" in e.value.message


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no configuration file"):
        ServerSettings.load(tmp_path / "nope.toml", tmp_path / "absent")


def test_reading_settings_loads_no_pydantic_settings() -> None:
    """The agent's start-up (``lamina agent run``, every timer tick) does not pay
    pydantic-settings' import (and asyncio's): about 70 ms of CPU."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from lamina.config import AGENT_CONFIG, AgentSettings\n"
        "AgentSettings.load(None, AGENT_CONFIG, state=Path('/x'))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pydantic_settings', 'asyncio'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_environment_is_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("lamina_agent_poll", "7.5")
    monkeypatch.setenv("LAMINA_AGENT_INSECURE", "true")
    monkeypatch.setenv("LAMINA_AGENT_NOT_A_SETTING", "x")
    s = AgentSettings.load(None, Path("/nonexistent/agent.toml"))
    assert (s.poll, s.insecure) == (7.5, True)
