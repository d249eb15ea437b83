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

from bench import commit_retry, load_agents, load_seen, load_servers
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
    line = load_servers.host_share(phase)
    assert line.startswith("100.0 s / 30.0 s;")
    assert (
        "servers 20.0, agents 50.0, bench 5.0, the rest (database, S3, other work) 25.0 s" in line
    )
    assert load_servers.host_share({}) == "—"  # a phase kept before these were measured


def test_a_load_phase_counts_the_commits_answered_uploads_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each 409 is a commit asked again (its walk, before session 16): the phase keeps the
    # commits by status, from the servers' request counter, less the counts before it.
    line = 'lamina_http_requests_total{method="POST",route="/api/v1/agent/commit",status="%s"} %s'
    texts = ["\n".join([line % ("200", "3.0"), line % ("409", "5.0")]), line % ("409", "2.0")]
    texts.append(
        'lamina_http_requests_total{method="GET",route="/api/v1/agent/work",status="200"} 9.0'
    )
    monkeypatch.setattr(load_servers, "_metrics", lambda servers: iter(texts))
    assert load_servers.commits_by_status([], {"409": 1}) == {"200": 3, "409": 6}
    described = load_servers.describe_commits({"200": 3, "409": 6})
    assert described.startswith("9 answered; 6 of them 409")
    assert load_servers.describe_commits(None) == "—"  # a phase kept before they were counted


def test_the_agents_polls_are_figured_from_exact_times(tmp_path: Path) -> None:
    # 100 config polls of 1..100 ms: the nearest-rank p95 is the 95th, 95 ms (a histogram
    # bucket would say "<= 100 ms"); 40 work polls, one of them with no answer.
    lines = [f"/api/v1/agent/config\t1.0\t{ms / 1000}\t200\t0.0" for ms in range(1, 101)]
    lines += ["/api/v1/agent/work\t1.0\t0.004\t200\t0.0"] * 39
    lines += ["/api/v1/agent/work\t1.0\t0.3\t0\t0.25"]  # no answer; 250 ms of it waiting
    (tmp_path / "polls-1.tsv").write_text("\n".join(lines[:70]) + "\n")
    (tmp_path / "polls-2.tsv").write_text("\n".join(lines[70:]) + "\n/api/v1/agent/co")
    seen = load_seen.agent_polls(tmp_path)
    config = seen["by_route"]["/api/v1/agent/config"]
    assert (config["polls"], config["p50_ms"], config["p95_ms"], config["p99_ms"]) == (
        100,
        50.0,
        95.0,
        99.0,
    )
    assert config["within"] == {"50 ms": 0.5, "100 ms": 1.0}
    assert seen["polls"] == 140 and seen["failed"] == 1  # the line cut short is left out
    assert seen["by_route"]["/api/v1/agent/work"]["max_ms"] == 300.0
    assert seen["p95_ms"] == 94.0  # the 133rd of 140: 1..3 ms, 40 of 4 ms, then 5..94 ms
    # less the agents' own wait for a core: the slowest poll took 50 ms of the server's time
    assert seen["less_own_wait"]["max_ms"] == 100.0
    assert seen["less_own_wait"]["polls"] == 140
    assert load_seen.agent_polls(tmp_path / "none") == {
        "polls": 0,
        "failed": 0,
        "less_own_wait": {"polls": 0},
        "by_route": {},
    }


_AGENT = """
import os, sys
import httpx

folder = sys.argv[1]
lines_at_body = []

def lines():
    return sum(len(open(os.path.join(folder, f)).readlines()) for f in os.listdir(folder))

def body():
    lines_at_body.append(lines())  # the answer is read before its poll is written down
    yield b'{}'

def handler(request):
    if request.url.path.endswith("/work") and request.url.params.get("fail"):
        raise httpx.ConnectError("refused")
    return httpx.Response(200, content=body())

c = httpx.Client(base_url="http://server/api/v1", transport=httpx.MockTransport(handler))
c.post("/agent/config", json={"state": "idle"}).json()
c.get("/agent/work")
c.post("/agent/bundles", content=b"x")  # not a poll
try:
    c.get("/agent/work", params={"fail": "1"})
except httpx.ConnectError:
    pass
print(lines_at_body, lines())
"""


def test_the_agents_hook_times_each_poll_until_its_answer_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "polls"
    env = load_seen.agent_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, folder)
    out = subprocess.run(
        [sys.executable, "-c", _AGENT, os.fspath(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # each poll's answer was read before its line (0, then 1 line written, the bundle 2)
    assert out.split() == ["[0,", "1,", "2]", "3"]
    polls = load_seen.read_polls(folder)
    assert all(waited >= 0 for *_, waited in polls)
    assert [(r, status) for r, _, status, _ in polls] == [
        ("/api/v1/agent/config", 200),
        ("/api/v1/agent/work", 200),
        ("/api/v1/agent/work", 0),
    ]
    # without the variable the hook patches nothing
    (tmp_path / "other").mkdir()
    out = subprocess.run(
        [sys.executable, "-c", _AGENT, os.fspath(tmp_path / "other")],
        env={k: v for k, v in env.items() if k != load_seen.LOG_VARIABLE},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["[0,", "0,", "0]", "0"]


def test_the_commit_retry_bench_runs_a_commit_that_waits_then_lands() -> None:
    assert commit_retry.run(folders=1, retries=2) > 0
