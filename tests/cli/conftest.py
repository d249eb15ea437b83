from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli.invoke import invoke, subprocesses_wanted

LAMINA = [sys.executable, "-m", "lamina.cli"]


class Cli:
    """Runs the real `lamina` command as a user would: its ``main()`` in this process
    (tests/cli/invoke.py), or in a subprocess when ``process`` (tests about the process:
    start-up, signals, packaging) or ``LAMINA_TESTS_SUBPROCESS=1``."""

    def __init__(
        self,
        data: Path,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        process: bool = False,
    ) -> None:
        self.data = data
        self.extra = extra or []
        self.env = {**os.environ, **(env or {})}
        self.process = process or subprocesses_wanted(self.env)

    def args(self, *args: str) -> list[str]:
        return [*LAMINA, *args, "--data", str(self.data), *self.extra]

    def run(
        self, *args: str, ok: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        if self.process:
            p = subprocess.run(
                self.args(*args),
                capture_output=True,
                text=True,
                env=self.env,
                input=input,
                timeout=300,
            )
        else:
            p = invoke([*args, "--data", str(self.data), *self.extra], self.env, input)
        if ok and p.returncode != 0:
            raise AssertionError(
                f"lamina {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
            )
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture
def cli_factory(tmp_path: Path) -> Callable[..., Cli]:
    def make(
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        name: str = "data",
        process: bool = False,
    ) -> Cli:
        return Cli(tmp_path / name, extra, env, process)

    return make
