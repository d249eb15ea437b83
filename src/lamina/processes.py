"""Whether a process is alive, by its id: a leaf, for the engine's restore workers (their
parent gone) and the server's store tasks (the process that claimed one gone); and a
process's ``identity``, which no later process shares, for the holders of store tasks and
locks (a killed holder's pid may be reused after a restart or a reboot)."""

from __future__ import annotations

import os
import socket


def alive(pid: int) -> bool:
    """True while a process of this id exists, another user's included (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and another user's
        return True
    return True


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()[:8]
    except OSError:
        return "noboot"


def _started(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field
    22); None when it is gone (or there is no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    return fields[19].decode() if len(fields) > 19 else None


def identity(pid: int | None = None) -> str:
    """``HOST:PID:BOOT:START``: a process (this one by default) as no other can be, not a
    later one given the same id after a restart or a reboot (``is_gone``)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_boot_id()}:{_started(pid) or 0}"


def is_gone(ident: str) -> bool:
    """Whether the process ``identity`` named has ended: only ever True for a process of
    this host (one elsewhere cannot be asked: False)."""
    host, _, rest = ident.rpartition("@")[2].partition(":")
    pid, _, rest = rest.partition(":")
    boot, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if not boot:  # the older form, HOST:PID: by the id alone, never this process's own
        return int(pid) == os.getpid() or not alive(int(pid))
    return boot != _boot_id() or _started(int(pid)) != start


def lock_holder() -> str:
    """A holder name for a store lock: this process's ``identity`` and a random part (two
    holders in one process differ)."""
    import uuid

    return f"{identity()}/{uuid.uuid4().hex}"


def holder_gone(holder: str) -> bool:
    """Whether the process that took a lock as ``holder`` (``lock_holder``) has ended; a
    holder of another form (before session 23: a random hex) is never said gone."""
    ident, sep, _ = holder.partition("/")
    return bool(sep) and is_gone(ident)
