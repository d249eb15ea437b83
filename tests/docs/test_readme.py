"""The README's command sequences run as written, so it can never drift from the code.

Every fenced block right after a line ``<!-- test: run -->`` is run in a fresh
temporary folder, one command a line, each with bash; each must exit 0. The line
``. .venv/bin/activate`` stands for this test's own Python (its ``bin`` folder goes
first on PATH)."""

from __future__ import annotations

import os
import re
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
    for line in block:
        if line in (". .venv/bin/activate", "source .venv/bin/activate"):
            continue
        p = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert p.returncode == 0, (
            f"README command failed ({p.returncode}): {line}\n{p.stderr[-2000:]}"
        )
