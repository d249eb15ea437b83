"""The README's command sequences run as written, so it can never drift from the code.

Every fenced block right after a line ``<!-- test: run -->`` is run in a fresh
temporary folder as one bash script, as a reader pastes it: each command must exit 0
(``set -euo pipefail``), and the first that does not fails the test with its text.
Commands started in the background (the fleet quickstart's server) are stopped when
the block ends. The line ``. .venv/bin/activate`` stands for this test's own Python
(its ``bin`` folder goes first on PATH), and the server's port 8470 becomes a free
port, so that the block never meets a server already running."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
MARK = "<!-- test: run -->"
_BLOCK = re.compile(r"^" + re.escape(MARK) + r"\n```(?:sh|bash|console)?\n(.*?)^```", re.M | re.S)


def blocks(text: str) -> list[list[str]]:
    out = []
    for m in _BLOCK.finditer(text):
        lines = [line.strip() for line in m.group(1).splitlines()]
        out.append([line for line in lines if line and not line.startswith("#")])
    return out


def test_the_marker_finds_the_quickstart() -> None:
    found = blocks(README.read_text())
    assert found, "no README block is marked to run"
    assert any("lamina snapshot create" in line for block in found for line in block)
    # The marker quoted in prose is not a block.
    assert len(found) == README.read_text().count("\n" + MARK + "\n```")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks(README.read_text()))))
def test_readme_block_runs(index: int, tmp_path: Path) -> None:
    block = blocks(README.read_text())[index]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    script = "\n".join(
        line for line in block if line not in (". .venv/bin/activate", "source .venv/bin/activate")
    ).replace("8470", str(free_port()))
    prologue = (
        "set -euo pipefail\n"
        "trap 'echo \"README command failed: $BASH_COMMAND\" >&2' ERR\n"
        "trap 'for j in $(jobs -p); do kill $j 2>/dev/null || true; done; wait || true' EXIT\n"
    )
    p = subprocess.Popen(
        ["bash", "-c", prologue + script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the whole group is stopped below, whatever happens
    )
    try:
        out, err = p.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, (
        f"README block {index} failed ({p.returncode}):\n{out[-2000:]}\n{err[-3000:]}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
