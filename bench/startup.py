"""Start-up time of the commands people and init systems run most: ``lamina --help``,
``lamina agent status`` and ``lamina agent boot`` (run before services start).

``python -m bench.startup`` from the project root (not part of ``make test``). Makes a
throw-away agent state folder (an ``agent.json`` and an empty staging area), then for
each command prints the median wall time and CPU time (user + system) of ``--repeat``
runs, against the 150 ms target, and the Lamina and third-party modules it imported
that cost most (from ``python -X importtime``). Nothing is asserted: on a busy machine
the wall time is high, the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 150
STATE = {
    "server": "https://lamina.example:8470",
    "device_id": "bench",
    "credential": "lmd_bench",
    "root": "/",
    "chunker_seed": 1,
    "id_key": "00" * 32,
    "min_size": 512 * 1024,
    "avg_size": 1024 * 1024,
    "max_size": 8 * 1024 * 1024,
    "version": 2,
}


def commands(state: Path) -> dict[str, list[str]]:
    return {
        "lamina --help": ["--help"],
        "lamina agent status": ["agent", "status", "--state", str(state)],
        "lamina agent boot": ["agent", "boot", "--state", str(state)],
    }


#: The floor, measured in the same run: Python alone, and Python importing Typer (which
#: imports pydantic for its parameter types): no Lamina command starts faster than that.
FLOORS = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import typer'": ["-c", "import typer, typer.main, pydantic"],
}


def run_once(args: list[str], python_args: list[str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``lamina ARGS`` (or ``python PYTHON_ARGS``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *(python_args or ["-m", "lamina.cli", *args])],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def heaviest_imports(args: list[str], top: int) -> list[tuple[str, float]]:
    """The top-level packages a run imports, by their cumulative import time (ms)."""
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lamina.cli", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    cost: dict[str, float] = {}
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (x.strip() for x in line[len("import time:") :].split("|"))
        if not cumulative.isdigit():
            continue
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "lamina" else parts[0]
        if name.strip() == key:  # the package's own line carries its cumulative time
            cost[key] = cost.get(key, 0) + int(cumulative) / 1000
    return sorted(cost.items(), key=lambda kv: -kv[1])[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7, help="Runs of each command.")
    ap.add_argument("--top", type=int, default=6, help="Heaviest imports to list.")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lamina-startup-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir(mode=0o700)
        (state / "agent.json").write_text(json.dumps(STATE))
        os.chmod(state / "agent.json", 0o600)
        print(f"{'command':<22} {'wall ms':>8} {'cpu ms':>8}  target {TARGET_MS} ms (cpu)")
        for label, python_args in FLOORS.items():
            runs = [run_once([], python_args) for _ in range(opts.repeat)]
            wall = statistics.median(w for w, _ in runs) * 1000
            cpu = statistics.median(c for _, c in runs) * 1000
            print(f"{label:<22} {wall:8.0f} {cpu:8.0f}  (floor)")
        for label, args in commands(state).items():
            runs = [run_once(args) for _ in range(opts.repeat)]
            wall = statistics.median(w for w, _ in runs) * 1000
            cpu = statistics.median(c for _, c in runs) * 1000
            verdict = "ok" if cpu <= TARGET_MS else "over"
            print(f"{label:<22} {wall:8.0f} {cpu:8.0f}  {verdict}")
            heavy = ", ".join(f"{n} {ms:.0f}" for n, ms in heaviest_imports(args, opts.top))
            print(f"{'':<22} imports (ms): {heavy}")


if __name__ == "__main__":
    main()
