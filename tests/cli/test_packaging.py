"""Two installs: `pip install lamina` (the agent and the client CLI) and `lamina[server]`.

The fast tests run the CLI with the server's libraries made unimportable, as they are
in a venv without the extra; the slow one builds the wheel, installs it into a clean
venv without the extra and runs the agent's commands there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The top-level modules of the "server" extra (and what they pull in).
SERVER_ONLY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "boto3",
    "botocore",
    "jinja2",
    "multipart",
    "python_multipart",
    "prometheus_client",
)

# Runs `lamina ARGS` in a Python where importing a server library fails as if it were
# not installed, and prints which of them something tried to import.
_BLOCKED = textwrap.dedent(
    """
    import sys
    blocked = set(sys.argv[1].split(","))
    tried = []

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                tried.append(name)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    sys.argv = ["lamina", *sys.argv[2:]]
    from lamina.cli import main
    try:
        main()
    finally:
        print("TRIED=" + ",".join(tried), file=sys.stderr)
    """
)


def lamina_without_server(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKED, ",".join(SERVER_ONLY), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["agent", "--help"],
        ["agent", "run", "--help"],
        ["device", "list", "--help"],
        ["snapshot", "create", "--help"],
    ],
)
def test_commands_start_without_the_server_extra(args: list[str]) -> None:
    r = lamina_without_server(*args)
    assert r.returncode == 0, r.stderr
    assert "TRIED=\n" in r.stderr or r.stderr.rstrip().endswith("TRIED=")


def test_agent_status_runs_without_the_server_extra(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    r = lamina_without_server("agent", "status", "--state", str(state), "--json")
    # Not enrolled: a Lamina error, not an ImportError.
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: "), r.stderr
    assert r.stderr.rstrip().endswith("TRIED=")


def test_admin_commands_run_without_the_server_extra(tmp_path: Path) -> None:
    r = lamina_without_server(
        "device", "list", env={"XDG_CONFIG_HOME": str(tmp_path), "LAMINA_URL": ""}
    )
    assert "not logged in" in r.stderr
    assert r.stderr.rstrip().endswith("TRIED=")


def test_store_commands_name_the_missing_extra(tmp_path: Path) -> None:
    r = lamina_without_server("snapshot", "create", str(tmp_path), "--data", str(tmp_path / "d"))
    assert r.returncode == 2
    assert "pip install 'lamina[server]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_backup_into_a_local_store_runs_without_the_server_extra(tmp_path: Path) -> None:
    # The store was made where the extra is (its database migrated); backing up into it
    # then needs none of the server's libraries (lamina.db.sqlite_catalog).
    from lamina.db.stores import StoreLocation, init_store

    init_store(StoreLocation(data=tmp_path / "d")).close()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    r = lamina_without_server(
        "snapshot", "create", str(tmp_path / "src"), "--data", str(tmp_path / "d")
    )
    assert r.returncode == 0, r.stderr
    assert ": 1 files, 1 B; 1 read, 0 unchanged;" in r.stdout
    assert r.stderr.rstrip().endswith("TRIED=")


def _venv(path: Path) -> Path:
    """A clean venv without pip of its own (ensurepip's older pip costs about 8 s of CPU
    to install and twice the CPU of this one's to resolve): the test's pip installs into
    it with ``pip --python``, into the venv's own site-packages."""
    venv.EnvBuilder(with_pip=False, clear=True).create(path)
    return path / "bin"


@pytest.mark.slow
def test_wheel_installs_without_the_server_extra(tmp_path: Path) -> None:
    """`python -m build` makes a wheel and an sdist; the wheel alone, in a clean venv,
    brings no server library and runs the agent's commands."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheels = list(dist.glob("lamina-*.whl"))
    assert len(wheels) == 1
    assert list(dist.glob("lamina-*.tar.gz"))
    bin_ = _venv(tmp_path / "venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", bin_ / "python", "install", "--quiet", wheels[0]],
        check=True,
        capture_output=True,
        timeout=600,
    )
    found = subprocess.run(
        [
            bin_ / "python",
            "-c",
            "import importlib.util, json, sys; "
            "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))",
            *SERVER_ONLY,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(found.stdout) == []
    version = subprocess.run(
        [bin_ / "lamina", "--version"], check=True, capture_output=True, text=True
    )
    assert version.stdout.startswith("lamina ")
    agent_help = subprocess.run(
        [bin_ / "lamina", "agent", "--help"], check=True, capture_output=True, text=True
    )
    assert "enroll" in agent_help.stdout
