"""The load test's endpoints: made from a shared base, enrolled, their agents started together and reaped."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    CommandFailed,
    warn,
)
from bench.corpus import copy_tree
from bench.e2e_procs import Cli, Server, lamina_exe
from bench.load_servers import CLI_TIMEOUT, MiB, host_cpu, own_cpu, rss


@dataclass
class Endpoint:
    index: int
    root: Path
    state: Path
    home: Path  # XDG_CONFIG_HOME of its `lamina` commands
    unique_bytes: int = 0
    unique_files: int = 0


@dataclass
class AgentRun:
    endpoint: int
    started: float = 0.0  # seconds after the load phase began
    seconds: float | None = None
    returncode: int | None = None
    timed_out: bool = False
    cpu_s: float = 0.0  # the agent process's user + system CPU
    peak_rss: int = 0  # the agent process's peak resident memory (bytes, ``ru_maxrss``)
    synced: bool = False
    bytes: int = 0
    files: int = 0
    uploaded_bytes: int = 0
    files_read: int = 0
    stderr_tail: str = ""
    agent_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.synced and not self.timed_out


def make_endpoints(
    work: Path, base: Path, n: int, unique_mb: float, seed: int
) -> tuple[list[Endpoint], float]:
    t0 = time.perf_counter()
    out = []
    for i in range(n):
        d = work / "endpoints" / f"ep-{i:03d}"
        root = d / "root"
        root.parent.mkdir(parents=True)
        copy_tree(base, root)
        etc = root / "etc"
        etc.mkdir(exist_ok=True)
        rng = random.Random(f"{seed}:{i}")
        (etc / "hostname").write_text(f"load-ep-{i:03d}\n")
        (etc / "machine-id").write_text(rng.randbytes(16).hex() + "\n")
        (etc / "os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n')
        docs = root / "home" / f"user{i:03d}" / "Documents"
        docs.mkdir(parents=True)
        ep = Endpoint(i, root, d / "state", d / "config")
        budget = int(unique_mb * MiB)
        while ep.unique_bytes < budget:
            size = min(budget - ep.unique_bytes, rng.randint(16 * 1024, 1024 * 1024))
            (docs / f"unique-{ep.unique_files:03d}.bin").write_bytes(rng.randbytes(size))
            ep.unique_bytes += size
            ep.unique_files += 1
        out.append(ep)
    return out, time.perf_counter() - t0


def enroll_all(
    endpoints: list[Endpoint], url: str, token: str, env: dict[str, str], workers: int = 4
) -> list[str]:
    """Enroll every endpoint (a few at a time); return the failures."""

    def one(ep: Endpoint) -> str | None:
        cli = Cli(ep.home, env)
        try:
            doc = cli.json(
                "agent",
                "enroll",
                "--server",
                url,
                "--token",
                token,
                "--root",
                ep.root,
                "--state",
                ep.state,
                timeout=CLI_TIMEOUT,
            )
        except (CommandFailed, json.JSONDecodeError) as e:
            return f"ep-{ep.index:03d}: {e}"
        if doc.get("state") != "active":
            return f"ep-{ep.index:03d}: enrolled {doc.get('state')}, not active (centralized)"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r for r in pool.map(one, endpoints) if r]


def parse_agent_output(run: AgentRun, stdout: str) -> None:
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        return
    run.synced = bool(doc.get("synced"))
    stats = doc.get("last_sync_stats") or {}
    run.bytes = int(stats.get("bytes") or 0)
    run.files = int(stats.get("files") or 0)
    run.uploaded_bytes = int(stats.get("uploaded_bytes") or 0)
    run.files_read = int(stats.get("files_read") or 0)
    run.agent_errors = list(stats.get("errors") or [])


def reap(p: subprocess.Popen[bytes], run: AgentRun, *, block: bool) -> int | None:
    """The exit code of a child (None while it runs), by ``wait4``; once it exited, its
    CPU seconds and peak RSS go into ``run``."""
    pid, status, ru = os.wait4(p.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    p.returncode = os.waitstatus_to_exitcode(status)
    run.cpu_s = ru.ru_utime + ru.ru_stime
    run.peak_rss = ru.ru_maxrss * 1024
    return p.returncode


def duplicate_blobs(data: Path) -> dict[str, int] | None:
    """Blobs stored more than once (racing uploads), read from the embedded SQLite index.

    Diagnostic only: it reads Lamina's schema (``blobs``: id, pack_seq, length), so it
    returns None if that is not there.
    """
    db = data / "lamina.db"
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            rows, extra_bytes = con.execute(
                "SELECT count(*), coalesce(sum(length), 0) FROM blobs b WHERE EXISTS "
                "(SELECT 1 FROM blobs o WHERE o.id = b.id AND o.pack_seq < b.pack_seq)"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        warn(f"could not count duplicate blobs: {e}")
        return None
    return {"extra_copies": int(rows), "extra_bytes": int(extra_bytes)}


#: ``--agent-priority``: how the agents are scheduled beside the server on the bench host.
PRIORITIES = ("idle", "normal")


def set_idle(pid: int) -> None:
    """Linux's SCHED_IDLE for a child just started (before its interpreter starts a
    thread, which would inherit it): CPU only when nothing else on the host wants it."""
    os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def run_agents(
    endpoints: list[Endpoint],
    env: dict[str, str],
    *,
    priority: str = "idle",
    parallel: int,
    agent_timeout: float,
    deadline: float,
    servers: list[Server],
    logs: Path,
) -> tuple[list[AgentRun], float, dict[str, Any]]:
    """Start ``agent run --once`` for every endpoint, at most ``parallel`` at a time.

    ``priority`` ``idle`` runs each agent under SCHED_IDLE: in a fleet every agent has a
    machine of its own, here they share the server's cores, and at the same priority
    200 agents leave the server about 1/200 of them (bench/README.md).

    Returns the runs, the wall time from the first start to the last exit, and samples of
    the servers (CPU summed, the largest RSS) taken every half second.
    """
    logs.mkdir(parents=True, exist_ok=True)
    todo = list(endpoints)
    live: dict[int, tuple[subprocess.Popen[bytes], float, Any, Any]] = {}
    runs = {ep.index: AgentRun(ep.index) for ep in endpoints}
    samples: list[dict[str, float]] = []
    cap = parallel if parallel > 0 else len(endpoints)
    t0 = time.perf_counter()
    cpu0 = sum(s.cpu() for s in servers)
    host0, own0 = host_cpu(), own_cpu()
    last_sample = 0.0
    max_live = 0
    try:
        while todo or live:
            now = time.perf_counter() - t0
            past_deadline = now > deadline
            while todo and len(live) < cap and not past_deadline:
                ep = todo.pop(0)
                out = open(logs / f"ep-{ep.index:03d}.out", "wb")  # noqa: SIM115 (closed below)
                err = open(logs / f"ep-{ep.index:03d}.err", "wb")  # noqa: SIM115
                p = subprocess.Popen(
                    [
                        lamina_exe(),
                        "agent",
                        "run",
                        "--once",
                        "--state",
                        os.fspath(ep.state),
                        "--json",
                    ],
                    stdout=out,
                    stderr=err,
                    env={**env, "XDG_CONFIG_HOME": os.fspath(ep.home)},
                )
                if priority == "idle":
                    set_idle(p.pid)
                live[ep.index] = (p, time.perf_counter(), out, err)
                runs[ep.index].started = time.perf_counter() - t0
            if past_deadline and todo:
                for ep in todo:
                    runs[ep.index].stderr_tail = "not started: the load phase passed its deadline"
                todo = []
            max_live = max(max_live, len(live))
            for idx, (p, started, out, err) in list(live.items()):
                rc = reap(p, runs[idx], block=False)
                elapsed = time.perf_counter() - started
                if rc is None and (elapsed > agent_timeout or past_deadline):
                    p.kill()
                    rc = reap(p, runs[idx], block=True)
                    runs[idx].timed_out = True
                if rc is None:
                    continue
                out.close()
                err.close()
                r = runs[idx]
                r.returncode = rc
                r.seconds = elapsed
                parse_agent_output(r, (logs / f"ep-{idx:03d}.out").read_text(errors="replace"))
                r.stderr_tail = "\n".join(
                    (logs / f"ep-{idx:03d}.err")
                    .read_text(errors="replace")
                    .strip()
                    .splitlines()[-25:]
                )
                del live[idx]
            if now - last_sample >= 0.5:
                samples.append(
                    {
                        "t": round(now, 2),
                        "server_cpu_s": round(sum(s.cpu() for s in servers) - cpu0, 2),
                        "server_rss": max(rss(s) for s in servers),
                        "agents_running": len(live),
                        "load1": os.getloadavg()[0],
                    }
                )
                last_sample = now
            if not all(s.alive() for s in servers):
                warn("the server process exited during the load phase")
                for idx, (p, started, out, err) in list(live.items()):
                    p.kill()
                    runs[idx].returncode = reap(p, runs[idx], block=True)
                    out.close()
                    err.close()
                    runs[idx].seconds = time.perf_counter() - started
                    runs[idx].stderr_tail = "killed: the server exited"
                live.clear()
                for ep in todo:
                    runs[ep.index].stderr_tail = "not started: the server exited"
                todo = []
            time.sleep(0.05)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): stop the agents we started
        for p, *_ in live.values():
            p.kill()
            p.wait()
        raise
    wall = time.perf_counter() - t0
    (busy0, idle0), (busy, idle) = host0, host_cpu()
    server_info = {
        "cpu_s": round(sum(s.cpu() for s in servers) - cpu0, 2),
        # the whole host's cores over the phase: what the servers, the agents and the
        # bench itself used of it, and the rest (the database, S3, any other work)
        "host_busy_s": round(busy - busy0, 2),
        "host_idle_s": round(idle - idle0, 2),
        "bench_cpu_s": round(own_cpu() - own0, 2),
        "peak_rss": max((s["server_rss"] for s in samples), default=0),
        "max_agents_running": max_live,
        "samples": samples,
    }
    return [runs[ep.index] for ep in endpoints], wall, server_info
