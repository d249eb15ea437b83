"""The load test's agents and probe (bench/load_agents.py, bench/load_servers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.load_agents import Endpoint, set_idle
from bench.load_servers import (
    ANSWER,
    DURATION,
    Probe,
    add_poll_buckets,
    all_polls,
    host_cpu,
    own_cpu,
    poll_p95_ms,
    polls_within,
)
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench import load, load_agents
from lamina.server.metrics import DURATION_BUCKETS


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


def _exposition(
    seconds: dict[str, list[float]], answers: dict[str, list[float]] | None = None
) -> str:
    """A server's ``/metrics`` text with these request durations by route (and the
    times from each request read whole to its answer)."""
    registry = CollectorRegistry()
    for metric, observed in ((DURATION, seconds), (ANSWER, answers or {})):
        h = Histogram(
            metric.removesuffix("_bucket"),
            "t",
            ["route"],
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        for route, values in observed.items():
            for v in values:
                h.labels(route).observe(v)
    return generate_latest(registry).decode()


def test_a_poll_p95_below_100_ms_shows_as_a_bucket_below_100_ms() -> None:
    config, work = "/api/v1/agent/config", "/api/v1/agent/work"
    before: dict[str, dict[float, float]] = {}
    add_poll_buckets(before, _exposition({config: [0.5] * 10}))  # before the load phase
    after: dict[str, dict[float, float]] = {}
    # two servers: 60 + 35 polls within 85 ms, 5 at 300 ms; the bundles route is no poll
    add_poll_buckets(after, _exposition({config: [0.5] * 10 + [0.085] * 60, work: [0.02] * 5}))
    add_poll_buckets(after, _exposition({config: [0.3] * 5, work: [0.085] * 30}))
    add_poll_buckets(after, _exposition({"/api/v1/agent/bundles": [0.001] * 1000}))
    assert set(after) == {config, work}
    p95, n = poll_p95_ms(all_polls(before), all_polls(after))
    assert (p95, n) == (90.0, 100)  # the 95th of 100 polls is in the 80-90 ms bucket
    # one more slow poll: the 95th is then in the 250 ms bucket
    add_poll_buckets(after, _exposition({work: [0.2]}))
    assert poll_p95_ms(all_polls(before), all_polls(after)) == (250.0, 101)
    only = {b: n - all_polls(before).get(b, 0.0) for b, n in all_polls(after).items()}
    assert polls_within(only, 0.05) == 5 / 101
    assert polls_within(only, 0.1) == 95 / 101
    assert polls_within(only, 0.033) is None  # no such bucket
    assert polls_within({}, 0.1) is None


def test_the_servers_part_of_a_poll_is_read_apart_from_its_duration() -> None:
    """The answer histogram (from the poll read whole) is read by its own name: polls
    whose agent sent its body late are slow in one and quick in the other."""
    config = "/api/v1/agent/config"
    text = _exposition({config: [0.4] * 10 + [0.02] * 90}, {config: [0.02] * 100})
    durations: dict[str, dict[float, float]] = {}
    answers: dict[str, dict[float, float]] = {}
    add_poll_buckets(durations, text)
    add_poll_buckets(answers, text, ANSWER)
    assert poll_p95_ms({}, all_polls(durations)) == (500.0, 100)
    assert poll_p95_ms({}, all_polls(answers)) == (25.0, 100)


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


def test_the_host_share_of_a_load_phase_names_what_the_load_generator_took() -> None:
    # Do the agents (the load generator) take the CPU the servers need? The phase keeps
    # the host's busy and idle CPU beside the servers', the agents' and the bench's own;
    # what is left of the busy CPU is the database, S3 and any other work on the host.
    busy, idle = host_cpu()
    assert busy > 0 and idle >= 0
    later = host_cpu()
    assert later[0] >= busy and later[1] >= idle
    assert own_cpu() > 0
    phase = {
        "host_busy_s": 100.0,
        "host_idle_s": 30.0,
        "server_cpu_s": 20.0,
        "agents_cpu_s": 50.0,
        "bench_cpu_s": 5.0,
    }
    line = load._host_share(phase)
    assert line.startswith("100.0 s / 30.0 s;")
    assert (
        "servers 20.0, agents 50.0, bench 5.0, the rest (database, S3, other work) 25.0 s" in line
    )
    assert load._host_share({}) == "—"  # a phase kept before these were measured
