"""Rebuilding the initramfs after a migration onto hardware with other storage drivers.

A host-only initramfs holds the storage modules of the machine it was built on;
on other hardware the system may not find its root. The server compares the
storage controllers' drivers in the two machines' facts and, when they differ,
the migration's journal carries ``rebuild_initramfs``: the marker ``agent boot``
acts on right after the apply, with ``update-initramfs -u -k all`` (Debian
family) or ``dracut --regenerate-all --force`` (RHEL family). A folder endpoint
(a root other than ``/``) has no initramfs of its own: the rebuild is reported
as ``scheduled`` for whoever builds its boot image.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

TIMEOUT = 900


def rebuild(root: Path) -> str:
    """``rebuilt``, ``scheduled`` (not the running system) or ``failed: why``."""
    if root.resolve() != Path("/"):
        return "scheduled"
    for argv in (
        ["update-initramfs", "-u", "-k", "all"],
        ["dracut", "--regenerate-all", "--force"],
    ):
        exe = shutil.which(argv[0])
        if exe is None:
            continue
        try:
            p = subprocess.run(
                [exe, *argv[1:]], capture_output=True, text=True, timeout=TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"failed: {e}"
        return "rebuilt" if p.returncode == 0 else f"failed: {p.stderr.strip()[-300:]}"
    return "failed: neither update-initramfs nor dracut is installed"
