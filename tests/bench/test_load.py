"""The load test's agents and probe (bench/load_agents.py, bench/load_servers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.load_agents import Endpoint, set_idle
from bench.load_servers import Probe

from bench import load_agents


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


class _Stopped:
    """A stand-in for the load phase's server whose liveness check is interrupted (as by
    Ctrl-C or the bench's SIGTERM handler) once the agents are started."""

    proc = None

    def cpu(self) -> float:
        return 0.0

    def alive(self) -> bool:
        raise KeyboardInterrupt("signal 15")


def test_an_interrupted_load_phase_stops_the_agents_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = tmp_path / "agent"
    agent.write_text("#!/bin/sh\nexec sleep 600\n")
    agent.chmod(0o755)
    started: list[subprocess.Popen[bytes]] = []

    class Recorded(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(load_agents, "lamina_exe", lambda: os.fspath(agent))
    monkeypatch.setattr(load_agents.subprocess, "Popen", Recorded)
    eps = [Endpoint(i, tmp_path, tmp_path / f"s{i}", tmp_path / f"h{i}") for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        load_agents.run_agents(
            eps,
            dict(os.environ),
            priority="normal",
            parallel=0,
            agent_timeout=600,
            deadline=600,
            servers=[_Stopped()],  # type: ignore[list-item]
            logs=tmp_path / "logs",
        )
    assert len(started) == 3
    assert all(p.poll() is not None for p in started)
