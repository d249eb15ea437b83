"""``depmod`` for the kernel modules a staged apply adds or removes (a driver pack's).

At staging, :func:`kernels_of` reads the transaction's ops: a path under
``[usr/]lib/modules/KVER`` (a module such as ``updates/r8169.ko``, or a folder
swapped whole) puts ``KVER`` in the journal's ``depmod`` list. Right after the apply (and again
after a rollback, which takes the modules away), ``agent boot`` runs
``depmod -b ROOT KVER`` for each (:func:`run`) and records the outcome in the
journal (``depmod_done``); a boot that finds an applied transaction without it
(the machine stopped in between) runs it then. A machine without kmod, or a kernel
whose modules folder is not there, is skipped and says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

TIMEOUT = 300
#: Where depmod lives when the agent's PATH lacks the sbin folders.
_SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
#: A path in a kernel's modules folder (a module, or a folder swapped whole).
_MODULE = re.compile(r"^(?:usr/)?lib/modules/([^/]+)(?:/.*)?$")
#: A kernel release as ``uname -r`` prints it; anything else is not run.
_KVER = re.compile(r"^[0-9][A-Za-z0-9._+~-]{0,127}$")


_MODULE_DIRS = ("lib/modules", "usr/lib/modules")


def kernels_of(ops: Iterable[list[str]], sides: Iterable[Path] = ()) -> list[str]:
    """The kernel releases whose modules the ops add, replace or remove.

    An op on a folder above the modules folders (``lib``, ``usr/lib``: a folder
    the endpoint lacked, swapped whole) counts the kernels found below it in
    ``sides`` (the transaction's ``new/``, and the live root)."""
    out: set[str] = set()
    sides = list(sides)
    for op in ops:
        if op[0] not in ("swap", "remove"):
            continue
        m = _MODULE.match(op[1])
        if m is not None:
            out.add(m.group(1))
            continue
        for d in _MODULE_DIRS:
            if d != op[1] and not d.startswith(op[1] + "/"):
                continue
            for side in sides:
                folder = side / d
                if folder.is_dir() and not folder.is_symlink():
                    out.update(k.name for k in folder.iterdir() if k.is_dir())
    return sorted(k for k in out if _KVER.match(k))


def run(root: Path, kernels: Iterable[str]) -> dict[str, str]:
    """``depmod -b ROOT KVER`` per kernel: ``done``, ``skipped: why`` or ``failed: why``."""
    exe = shutil.which("depmod") or shutil.which("depmod", path=_SBIN)
    out = {}
    for kver in kernels:
        if not _KVER.match(kver):
            out[kver] = "skipped: not a kernel release"
        elif exe is None:
            out[kver] = "skipped: kmod (depmod) is not installed"
        elif not any((root / d / kver).is_dir() for d in ("lib/modules", "usr/lib/modules")):
            out[kver] = "skipped: no modules folder for this kernel"
        else:
            try:
                p = subprocess.run(
                    [exe, "-b", str(root), kver],
                    capture_output=True,
                    text=True,
                    timeout=TIMEOUT,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                out[kver] = f"failed: {e}"
                continue
            out[kver] = "done" if p.returncode == 0 else f"failed: {p.stderr.strip()[-300:]}"
    return out
