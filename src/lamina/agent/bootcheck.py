"""Is the system up? The check the agent runs before it confirms a staged apply's boot.

On a real machine (root ``/``) the system is healthy once systemd reached
``multi-user.target``. A folder endpoint has no init system: the check is a
command given to ``lamina agent run --boot-check CMD`` (run with
``LAMINA_ROOT`` set to the endpoint's root; exit status 0 means healthy), and
without one, the agent reaching the server is the evidence.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

BootCheck = Callable[[Path], bool]
#: Seconds a boot check may take before it counts as unhealthy.
CHECK_TIMEOUT = 120


def systemd_reached_multi_user(root: Path) -> bool:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return True  # no systemd: reaching the server is all there is to check
    p = subprocess.run(
        [systemctl, "is-active", "--quiet", "multi-user.target"],
        capture_output=True,
        timeout=CHECK_TIMEOUT,
        check=False,
    )
    return p.returncode == 0


def command_check(command: str) -> BootCheck:
    """A shell-free command line (split like a shell would) whose exit status 0 means healthy."""
    argv = shlex.split(command)

    def check(root: Path) -> bool:
        try:
            p = subprocess.run(
                argv,
                capture_output=True,
                timeout=CHECK_TIMEOUT,
                check=False,
                env={**os.environ, "LAMINA_ROOT": str(root)},
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return p.returncode == 0

    return check


def default_check(root: Path) -> bool:
    """``multi-user.target`` on a real machine; healthy on a folder endpoint."""
    if root.resolve() == Path("/"):
        return systemd_reached_multi_user(root)
    return True
