"""The load test's agent polls as the agents saw them: each one's exact time, from its
request sent to its answer read (``bench/load_hook/sitecustomize.py``), and their
percentiles, the goal's figure (p95 < 100 ms).

The servers' histograms (``bench.load_servers``) count the same polls in buckets whose
upper bound stands for every poll in them, and from the moment the server has the
request's headers: neither says what an agent waited for. These times do: the agent's
own HTTP work, its connection and its waits for a core included.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

#: The agents' hook (``sitecustomize``), first on their ``PYTHONPATH``.
HOOK = Path(__file__).resolve().parent / "load_hook"
#: The environment variable naming the folder the agents write their polls' times to.
LOG_VARIABLE = "LAMINA_BENCH_POLL_LOG"
#: Bounds (ms) of the shares printed and kept ("within 50 ms", "within 100 ms").
WITHIN_MS = (50, 100)


def agent_env(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` for agents whose polls are timed into ``folder`` (made here)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.fspath(HOOK) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return {**env, "PYTHONPATH": path, LOG_VARIABLE: os.fspath(folder)}


def read_polls(folder: Path) -> list[tuple[str, float, int, float]]:
    """Every poll the agents timed into ``folder``: (route, seconds, HTTP status, 0 for no
    answer, seconds of it the agent waited for a core). A line cut short (an agent killed
    while writing it) is left out."""
    out: list[tuple[str, float, int, float]] = []
    for f in sorted(folder.glob("polls-*.tsv")):
        for line in f.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) != 5:
                continue
            try:
                out.append((parts[0], float(parts[2]), int(parts[3]), float(parts[4])))
            except ValueError:
                continue
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """The smallest value that at least ``q`` of the values are at or below (nearest rank):
    a p95 below 100 ms means that 95% of the polls took less than 100 ms."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def figures(seconds: list[float]) -> dict[str, Any]:
    """p50, p95, p99 and max (ms, exact), the count, and the shares within ``WITHIN_MS``."""
    s = sorted(seconds)
    if not s:
        return {"polls": 0}
    return {
        "polls": len(s),
        **{f"p{q}_ms": round(1000 * percentile(s, q / 100), 2) for q in (50, 95, 99)},
        "max_ms": round(1000 * s[-1], 2),
        "within": {f"{ms} ms": sum(1 for x in s if x * 1000 <= ms) / len(s) for ms in WITHIN_MS},
    }


def agent_polls(folder: Path) -> dict[str, Any]:
    """The figures of every poll in ``folder``, and of each route apart; polls the server
    did not answer (no answer, or a 5xx) are counted in the figures and as ``failed``.

    ``less_own_wait``: the same polls less the time each agent waited for a core during
    it (under ``SCHED_IDLE``, behind the servers, the database and the other agents on
    this host): what an agent on a machine of its own would have seen, about."""
    polls = read_polls(folder)
    out = figures([s for _, s, _, _ in polls])
    out["failed"] = sum(1 for _, _, status, _ in polls if status == 0 or status >= 500)
    out["less_own_wait"] = figures([max(0.0, s - w) for _, s, _, w in polls])
    out["by_route"] = {
        route: figures([s for r, s, _, _ in polls if r == route])
        for route in sorted({r for r, _, _, _ in polls})
    }
    return out


def describe(seen: dict[str, Any] | None) -> str:
    """One line: ``p50 / p95 / p99 ms over N polls (F failed)``, or a dash."""
    if not seen or not seen.get("polls"):
        return "—"
    return (
        f"{seen['p50_ms']:.1f} / {seen['p95_ms']:.1f} / {seen['p99_ms']:.1f} ms "
        f"over {seen['polls']} polls ({seen.get('failed', 0)} failed); within "
        + " · ".join(f"{k}: {100 * v:.1f}%" for k, v in seen["within"].items())
    )
