"""``bench.e2e_procs.TreeRss``: an agent's memory with its worker processes added up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from bench.e2e_procs import TreeRss

MIB = 2**20


def test_the_peak_adds_up_a_process_and_its_childrens_memory() -> None:
    """A parent and its child each hold 60 MiB (written: resident) at once: the sampled
    peak is their sum, above what the kernel's high-water mark of either process says."""
    child = "b = b'x' * (60 * 2**20); import sys; sys.stdout.write('held'); sys.stdout.flush(); sys.stdin.read()"
    parent = textwrap.dedent(
        f"""
        import subprocess, sys
        b = b"x" * (60 * 2**20)
        c = subprocess.Popen([sys.executable, "-c", {child!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert c.stdout.read(4) == b"held"
        sys.stdout.write("both"); sys.stdout.flush()
        sys.stdin.read()
        c.stdin.close(); c.wait()
        """
    )
    p = subprocess.Popen(
        [sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    tree = TreeRss(p.pid)
    try:
        assert p.stdout is not None and p.stdout.read(4) == b"both"
        both = tree.sample()  # both hold their memory until told to end
        deadline = time.monotonic() + 60
        while tree.peak < 120 * MIB and time.monotonic() < deadline:
            time.sleep(0.01)  # until the thread has sampled them together (not a timing test)
    finally:
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
        peak = tree.stop()
    assert both >= 120 * MIB
    assert peak >= 120 * MIB  # the thread's samples saw them together too


def test_a_commands_own_peak_is_its_own_not_the_benchs_pages_from_before_its_exec() -> None:
    """A command started by a bench holding 200 MiB: ``wait4``'s ``ru_maxrss`` says it
    peaked above 200 MiB (it counts the forked child's pages before ``exec``); the
    command's own high-water mark (``VmHWM``, what ``Cli.run`` reports) is its own."""
    held = b"x" * (200 * MIB)  # the bench, grown by a pass
    child = "import sys; sys.stdout.write('up'); sys.stdout.flush(); sys.stdin.read()"
    p = subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    tree = TreeRss(p.pid)
    assert p.stdout is not None and p.stdout.read(2) == b"up"
    deadline = time.monotonic() + 60
    while not tree.own_peak and time.monotonic() < deadline:
        time.sleep(0.01)  # until the thread has read it once (not a timing test)
    assert p.stdin is not None
    p.stdin.close()
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    tree.stop()
    _, _, usage = os.wait4(p.pid, 0)
    assert len(held) == 200 * MIB
    assert usage.ru_maxrss * 1024 >= 200 * MIB
    assert 0 < tree.own_peak < 100 * MIB
