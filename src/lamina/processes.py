"""Whether a process is alive, by its id: a leaf, for the engine's restore workers (their
parent gone) and the server's store tasks (the process that claimed one gone); and a
process's ``identity``, which no later process shares, for the holders of store tasks and
locks (a killed holder's pid may be reused after a restart or a reboot)."""

from __future__ import annotations

import collections
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


def _place() -> str:
    """Which machine and which process-id namespace this process sees: a pid is only
    ever compared within the same one (a host-network container shares the hostname
    and the boot id, not the pids)."""
    machine = "nomachine"
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                machine = f.read().strip()[:8] or machine
            break
        except OSError:
            continue
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        ns = "nons"
    return f"{machine}.{ns}"


def identity(pid: int | None = None) -> str:
    """``HOST:PID:BOOT:START:PLACE``: a process (this one by default) as no other can be,
    not a later one given the same id after a restart or a reboot (``is_gone``)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_boot_id()}:{_started(pid) or 0}:{_place()}"


def is_gone(ident: str) -> bool:
    """Whether the process ``identity`` named has certainly ended. Only a process of this
    machine and process-id namespace can be asked; anything that cannot be told for sure
    (another machine, another namespace, a ``/proc`` that does not show the process) is
    not gone: a live holder's lock must never be taken over."""
    ident = ident.removeprefix("server@")
    parts = ident.rsplit(":", 4)
    if len(parts) == 2:  # the older form, HOST:PID: by the id alone, never this process's
        host, pid = parts
        if host != socket.gethostname() or not pid.isdigit():
            return False
        return int(pid) == os.getpid() or not alive(int(pid))
    if len(parts) != 5:
        return False
    host, pid, boot, start, place = parts
    if host != socket.gethostname() or place != _place() or not pid.isdigit():
        return False
    if boot != _boot_id():
        return True  # this machine and namespace, booted since
    if not alive(int(pid)):
        return True
    now = _started(int(pid))
    return now is not None and now != start


def lock_holder() -> str:
    """A holder name for a store lock: this process's ``identity`` and a random part (two
    holders in one process differ)."""
    import uuid

    return f"{identity()}/{uuid.uuid4().hex}"


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[:1]
    except OSError:
        return False
    return bool(state) and state[0] not in (b"Z", b"X")


def is_alive(ident: str) -> bool:
    """Whether the process ``identity`` named certainly still runs: of this machine and
    process-id namespace, booted the same, its pid running (not a zombie) with the same
    start. Anything that cannot be told for sure is not (a lock's expiry then decides)."""
    parts = ident.removeprefix("server@").rsplit(":", 4)
    if len(parts) != 5:
        return False
    host, pid, boot, start, place = parts
    if host != socket.gethostname() or place != _place() or boot != _boot_id():
        return False
    return pid.isdigit() and _running(int(pid)) and _started(int(pid)) == start


#: The lock holders of this process that let go of their lock (``HeldLock``, the last
#: ``RELEASED`` of them): a row still naming one is a leftover (its unlock failed), taken
#: over as a dead holder's would be, not a live holder's.
RELEASED = 1000
_RELEASED: collections.deque[str] = collections.deque(maxlen=RELEASED)


def released(holder: str) -> None:
    """Note that ``holder`` (of this process) no longer holds its lock."""
    _RELEASED.append(holder)


def _let_go(holder: str, ident: str) -> bool:
    return ident == identity() and holder in _RELEASED


def holder_alive(holder: str) -> bool:
    """Whether the process that took a lock as ``holder`` certainly still runs and holds
    it: its lock, expired or not, is never taken over (it may be slow, stalled or
    stopped, and would go on where it was: a collection's mark of a large store, a
    roll's read on a slow S3). This process's leftovers (``released``) are not."""
    ident, sep, _ = holder.partition("/")
    return bool(sep) and not _let_go(holder, ident) and is_alive(ident)


def describe_holder(holder: str) -> str:
    """The process a lock's ``holder`` names, for a person: "process PID on HOST" (the
    holder itself when it is of another form)."""
    ident = holder.partition("/")[0].removeprefix("server@")
    parts = ident.rsplit(":", 4)
    if len(parts) in (2, 5) and parts[1].isdigit():
        return f"process {parts[1]} on {parts[0]}"
    return holder


def holder_gone(holder: str) -> bool:
    """Whether the process that took a lock as ``holder`` (``lock_holder``) has ended, or
    let go of it (a leftover row of this process); a holder of another form (before
    session 23: a random hex) is never said gone."""
    ident, sep, _ = holder.partition("/")
    return bool(sep) and (_let_go(holder, ident) or is_gone(ident))
