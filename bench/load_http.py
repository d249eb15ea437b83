"""What an agent's poll costs over HTTP: the server's CPU and the client's, per poll.

``python -m bench.load_http`` starts one ``lamina server`` on an embedded PostgreSQL
(``--sqlite``: on its own SQLite file), enrolls ``--devices`` devices through
``/agent/enroll`` with a token that centralizes them, sends each its start report (with
facts), then ``--polls`` idle ``/agent/config`` reports and as many idle ``/agent/work``
polls, one after the other over each device's keep-alive connection (httpx, as the agent
does), ``--rounds`` times. It prints the server process's CPU (``/proc/PID/stat``, all
its threads) and this process's (the client's HTTP work: what an agent's poll costs the
agent) per poll of each kind, and the client's wall time per poll, the median of the
rounds. Not a load test: sequential, no wait for a lock or another client.

A/B: ``--code A=/tmp/a/src --code B=src`` starts one server for each code (its
``PYTHONPATH``), each on a database of its own on the same PostgreSQL, and measures their
rounds in turn (A B A B ...), so that a change of the host's load between rounds falls on
both alike; the medians are printed per code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.common import clean_env
from bench.e2e_procs import Server
from bench.load_polls import postgres_server
from bench.load_servers import start_server


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def enroll(url: str, token: str, n: int) -> list[httpx.Client]:
    """``n`` devices enrolled with ``token``, each a keep-alive client with its credential."""
    clients = []
    with httpx.Client(base_url=url + "/api/v1", timeout=60) as c:
        for i in range(n):
            facts = {"machine_id": f"http-m{i}", "hostname": f"http-pc{i}"}
            r = c.post("/agent/enroll", json={"token": token, "facts": facts})
            r.raise_for_status()
            cred = r.json()["credential"]
            clients.append(
                httpx.Client(
                    base_url=url + "/api/v1",
                    headers={"Authorization": f"Bearer {cred}"},
                    timeout=60,
                )
            )
            report = {**idle_report(i), "facts": facts}
            clients[-1].post("/agent/config", json=report).raise_for_status()
    return clients


def idle_report(i: int) -> dict[str, Any]:
    """An idle agent's report (``runner.report``, without facts)."""
    return {
        "state": "idle",
        "progress": {},
        "disk_free": 9 * 1024**3,
        "last_error": None,
        "clock": dt.datetime.now(dt.UTC).isoformat(),
        "hostname": f"http-pc{i}",
    }


def measure(server_cpu: Any, clients: list[httpx.Client], polls: int) -> dict[str, float]:
    """Per poll of each kind: the server's CPU, the client's CPU and wall time (ms)."""
    out: dict[str, float] = {}
    for kind in ("config", "work"):
        s0, c0, t0 = server_cpu(), _own_cpu(), time.perf_counter()
        for k in range(polls):
            i = k % len(clients)
            if kind == "config":
                r = clients[i].post("/agent/config", json=idle_report(i))
            else:
                r = clients[i].get("/agent/work")
            r.raise_for_status()
            r.json()
        wall, client = time.perf_counter() - t0, _own_cpu() - c0
        out[f"{kind}_server_cpu_ms"] = round(1000 * (server_cpu() - s0) / polls, 3)
        out[f"{kind}_client_cpu_ms"] = round(1000 * client / polls, 3)
        out[f"{kind}_wall_ms"] = round(1000 * wall / polls, 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load_http", description=__doc__)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--polls", type=int, default=1000, help="polls of each kind per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sqlite", action="store_true", help="on SQLite, not PostgreSQL")
    ap.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="LABEL=PYTHONPATH",
        help="a server with this PYTHONPATH (repeat for an A/B; default: this checkout's)",
    )
    args = ap.parse_args(argv)
    codes = [c.split("=", 1) for c in args.code] or [["this", os.environ.get("PYTHONPATH", "")]]
    with tempfile.TemporaryDirectory(prefix="lamina-http-") as tmp:
        work = Path(tmp)
        if args.sqlite:
            rounds = _run(args, work, codes, lambda: [])
        else:
            with postgres_server(work) as pg:
                rounds = _run(args, work, codes, lambda: ["--db", pg.url(pg.create_database())])
    doc = {
        "db": "sqlite" if args.sqlite else "postgresql",
        "load": list(os.getloadavg()),
        "median": {
            label: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for label, rs in rounds.items()
        },
        "rounds": rounds,
    }
    print(json.dumps(doc))
    return 0


def _run(
    args: argparse.Namespace, work: Path, codes: list[list[str]], db: Callable[[], list[str]]
) -> dict[str, list[dict[str, float]]]:
    servers: list[tuple[str, Server, list[httpx.Client]]] = []
    try:
        for label, path in codes:
            env = {**clean_env(), "PYTHONPATH": path}
            server, _admin, token = start_server(work, f"server-{label}", env, db())
            servers.append((label, server, []))
            servers[-1][2].extend(enroll(server.url, token, args.devices))
            measure(server.cpu, servers[-1][2], min(args.polls, 200))  # warm: connections, caches
        rounds: dict[str, list[dict[str, float]]] = {label: [] for label, _ in codes}
        for _ in range(args.rounds):
            for label, server, clients in servers:
                rounds[label].append(measure(server.cpu, clients, args.polls))
        return rounds
    finally:
        for _, server, clients in servers:
            for c in clients:
                c.close()
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
