"""The load test's agents and probe (bench/load_agents.py, bench/load_servers.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.load_agents import set_idle
from bench.load_servers import Probe


def test_an_agent_started_idle_gets_cpu_only_when_nothing_else_wants_it() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert os.sched_getscheduler(child.pid) != os.SCHED_IDLE
        set_idle(child.pid)
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
    finally:
        child.communicate(b"")


def test_the_probe_reports_its_percentiles_and_failures() -> None:
    probe = Probe([])
    assert probe.figures() == {"requests": 0, "failed": 0}
    probe.seconds = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    probe.failed = 2
    assert probe.figures() == {
        "requests": 100,
        "failed": 2,
        "p50_ms": 51.0,
        "p95_ms": 95.0,
        "max_ms": 100.0,
    }
