"""``lamina.processes``: whether a process still exists, and which process an identity names."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from lamina.processes import (
    alive,
    describe_holder,
    holder_gone,
    identity,
    is_gone,
    lock_holder,
)


def test_a_running_process_is_alive_and_a_reaped_one_is_not() -> None:
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its id names no process
    assert not alive(child.pid)


def test_an_identity_names_one_process_and_no_later_one_given_its_id() -> None:
    """``identity``/``is_gone``: what store tasks and locks are held by. A pid alone is
    reused after a restart or a reboot (even by the new server itself); an identity is not."""
    child = subprocess.Popen(["sleep", "600"])
    try:
        ident = identity(child.pid)
        assert not is_gone(ident) and not is_gone(f"server@{ident}")
        host, pid, boot, start, place = ident.split(":")
        assert is_gone(f"{host}:{pid}:{boot}:{int(start) + 1}:{place}")  # a later process
        assert is_gone(f"{host}:{pid}:{'0' * len(boot)}:{start}:{place}")  # booted since
        # What cannot be told for sure is not gone: another host, another machine of the
        # same name or another pid namespace (a container), a malformed identity.
        assert not is_gone(f"elsewhere:{pid}:{boot}:{start}:{place}")
        assert not is_gone(f"{host}:{pid}:{'0' * len(boot)}:{start}:other.1")
        assert not is_gone(f"{host}:{pid}:{boot}:{int(start) + 1}:{place.split('.')[0]}.1")
        assert not is_gone("garbage") and not is_gone(f"{host}:x:{boot}:{start}:{place}")
    finally:
        child.kill()
        child.wait()
    assert is_gone(ident)
    # the older form, HOST:PID: by the pid alone, and never this very process's own
    assert is_gone(f"{host}:{child.pid}") and is_gone(f"{host}:{os.getpid()}")
    assert not is_gone(f"{host}:{os.getppid()}")
    # lock holders: this process's own is not gone; a random hex (older holders) never is
    assert not holder_gone(lock_holder()) and not holder_gone("ab" * 16)
    assert holder_gone(f"{ident}/x")


def test_a_lock_holder_is_described_as_its_process_and_host() -> None:
    """What a refused gc prints of the lock's holder (``store.locks.HeldLock.refused``)."""
    assert describe_holder(lock_holder()) == f"process {os.getpid()} on {socket.gethostname()}"
    assert describe_holder("server@" + lock_holder()).startswith(f"process {os.getpid()} on ")
    assert describe_holder("old-host:1234/abc") == "process 1234 on old-host"
    assert describe_holder("c0ffee") == "c0ffee"  # another form: as it is
