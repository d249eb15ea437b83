"""The CLI's first impression, over the real ``lamina`` entry point in a subprocess.

A usage error (no command, unknown command, missing argument, unknown option, bad
option value) is ONE line on stderr with a hint, exit code 2, never a traceback, and
any input it echoes is escaped (finding 18).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lamina import __version__

# The console script pip installed (``lamina = "lamina.cli:main"``), as a user runs it.
LAMINA = str(Path(sys.executable).with_name("lamina"))


def lamina(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    return subprocess.run(
        [LAMINA, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def assert_one_line_usage_error(p: subprocess.CompletedProcess[str], where: str) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ")
    assert lines[0].endswith(f"(see '{where} --help')")
    return lines[0]


USAGE_ERRORS = [
    # (arguments, the command whose help the hint names, words the line must carry)
    ((), "lamina", "missing command"),
    (("bogus",), "lamina", "No such command 'bogus'"),
    (("store",), "lamina store", "missing command"),
    (("store", "gc", "--orphan-grace"), "lamina store gc", "requires an argument"),
    (("snapshot", "create"), "lamina snapshot create", "Missing argument"),
    (("snapshot", "ls", "x", "--bogus"), "lamina snapshot ls", "No such option: --bogus"),
    (("user", "audit", "--limit", "abc"), "lamina user audit", "Invalid value for '--limit'"),
    (("device", "list", "--pending=yes"), "lamina device list", "does not take a value"),
    (("policy", "create"), "lamina policy create", "Missing argument"),
    (("cvd", "frobnicate"), "lamina cvd", "No such command 'frobnicate'"),
    (("layer", "record"), "lamina layer record", "missing command"),
    (("task", "watch"), "lamina task watch", "Missing argument"),
    (("agent", "run", "--poll", "often"), "lamina agent run", "Invalid value for '--poll'"),
]


@pytest.mark.parametrize(
    ("args", "where", "words"),
    USAGE_ERRORS,
    ids=[" ".join(a) or "no-args" for a, _, _ in USAGE_ERRORS],
)
def test_usage_error_is_one_line_with_a_hint_and_exit_code_2(
    args: tuple[str, ...], where: str, words: str
) -> None:
    line = assert_one_line_usage_error(lamina(*args), where)
    assert words in line


def test_usage_error_escapes_the_input_it_echoes() -> None:
    """An OSC title sequence and a CSI sequence typed as a command name come back escaped."""
    p = lamina("store", "\x1b]0;owned\x07\x1b[2J\x9b31m")
    line = assert_one_line_usage_error(p, "lamina store")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line), repr(line)
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m" in line


def test_version_option() -> None:
    p = lamina("--version")
    assert (p.returncode, p.stdout, p.stderr) == (0, f"lamina {__version__}\n", "")


def test_help_is_not_an_error() -> None:
    p = lamina("--help")
    assert p.returncode == 0
    assert "Usage: lamina" in p.stdout
