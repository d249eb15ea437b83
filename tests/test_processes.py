"""``lamina.processes.alive``: the one test of whether a process still exists."""

from __future__ import annotations

import os
import subprocess
import sys

from lamina.processes import alive


def test_a_running_process_is_alive_and_a_reaped_one_is_not() -> None:
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its id names no process
    assert not alive(child.pid)
