"""Start-up time of the commands people and init systems run most: ``lamina --help``,
``lamina agent status`` and ``lamina agent boot`` (run before services start), and the
fixed cost of a command that opens a store, ``lamina snapshot list``, beside restic's.

``python -m bench.startup`` from the project root (part of ``make bench``, not of
``make test``). Makes a throw-away agent state folder (an ``agent.json`` and an empty
staging area) and a small local store (Lamina's and restic's, of the same folder), then
for each command prints the median wall time and CPU time (user + system) of
``--repeat`` runs, the tools' order alternated run by run: the three start-up
commands against the 150 ms target, ``lamina snapshot list --json`` against
``restic snapshots --json`` (and ``restic version``, restic's floor). Then the key
derivations each tool pays when its key is sealed with a passphrase (Lamina's
argon2id, restic's scrypt), and the modules each Lamina command imported that cost
most (``python -X importtime``). Nothing is asserted: on a busy machine the wall time
is high, the CPU time is the steadier figure. The figures are kept in
``bench/results-startup.json`` (``--output``), which ``bench.report`` reads for the
README's start-up rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import host
from bench.e2e_procs import git_revision

TARGET_MS = 150
RESULTS = Path(__file__).parent / "results-startup.json"
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


RESTIC_PASSWORD = "bench"


def run_once(
    args: list[str], python_args: list[str] | None = None, argv: list[str] | None = None
) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``lamina ARGS`` (or ``python PYTHON_ARGS``, or
    the program ``ARGV``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        argv or [sys.executable, *(python_args or ["-m", "lamina.cli", *args])],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD},
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


def make_stores(tmp: Path) -> tuple[Path, Path | None]:
    """A Lamina store and (if restic is installed) a restic repository, each holding one
    snapshot of the same folder (a copy of this project's ``bench/*.py``: not ``bench``
    itself, whose ``work`` folder may hold a million files of another bench)."""
    data, repo, src = tmp / "lamina-store", tmp / "restic-repo", tmp / "src"
    src.mkdir()
    for f in Path(__file__).parent.glob("*.py"):
        shutil.copy2(f, src / f.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "RESTIC_"))}
    lamina = [sys.executable, "-m", "lamina.cli"]
    subprocess.run(
        [*lamina, "store", "init", "--data", str(data)], check=True, capture_output=True, env=env
    )
    subprocess.run(
        [*lamina, "snapshot", "create", str(src), "--data", str(data), "--json"],
        check=True,
        capture_output=True,
        env=env,
    )
    if shutil.which("restic") is None:
        return data, None
    renv = {**env, "RESTIC_PASSWORD": RESTIC_PASSWORD, "RESTIC_REPOSITORY": str(repo)}
    subprocess.run(["restic", "init"], check=True, capture_output=True, env=renv)
    subprocess.run(["restic", "backup", "-q", str(src)], check=True, capture_output=True, env=renv)
    return data, repo


def key_derivations(repeat: int) -> dict[str, float]:
    """CPU ms of each tool's passphrase key derivation, as its key files set it: Lamina's
    argon2id (``store/keys.py``'s parameters) and restic's scrypt (N, r, p of the
    repository made above, restic's defaults)."""
    from argon2.low_level import Type, hash_secret_raw

    from lamina.store.keys import _KDF_DEFAULTS

    def argon2id() -> None:
        hash_secret_raw(b"passphrase", b"0" * 16, hash_len=32, type=Type.ID, **_KDF_DEFAULTS)

    def scrypt() -> None:
        hashlib.scrypt(b"passphrase", salt=b"0" * 64, n=32768, r=8, p=1, maxmem=64 << 20, dklen=64)

    out = {}
    for label, fn in (
        ("argon2id t=3 m=64MiB p=2 (lamina)", argon2id),
        ("scrypt N=32768 r=8 p=1 (restic)", scrypt),
    ):
        cpu = []
        for _ in range(repeat):
            t0 = time.process_time()
            fn()
            cpu.append(time.process_time() - t0)
        out[label] = statistics.median(cpu) * 1000
    return out


def measure(
    cases: dict[str, tuple[list[str], list[str] | None, list[str] | None]], repeat: int
) -> dict[str, tuple[float, float]]:
    """Median wall and CPU ms of each case, the cases run in turn ``repeat`` times (so a
    burst of load on the machine falls on all of them alike)."""
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in cases}
    for i in range(repeat):
        order = list(cases) if i % 2 == 0 else list(reversed(cases))
        for label in order:
            args, python_args, argv = cases[label]
            runs[label].append(run_once(args, python_args, argv))
    return {
        label: (
            statistics.median(w for w, _ in r) * 1000,
            statistics.median(c for _, c in r) * 1000,
        )
        for label, r in runs.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7, help="Runs of each command.")
    ap.add_argument("--top", type=int, default=6, help="Heaviest imports to list.")
    ap.add_argument("--output", type=Path, default=RESULTS, help="Where the figures are kept.")
    opts = ap.parse_args()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="lamina-startup-") as tmp:
        machine = host.describe(Path(tmp))
        state = Path(tmp) / "state"
        state.mkdir(mode=0o700)
        (state / "agent.json").write_text(json.dumps({**STATE, "root": str(Path(tmp) / "root")}))
        (Path(tmp) / "root").mkdir()
        os.chmod(state / "agent.json", 0o600)
        data, repo = make_stores(Path(tmp))
        cases: dict[str, tuple[list[str], list[str] | None, list[str] | None]] = {
            label: ([], python_args, None) for label, python_args in FLOORS.items()
        }
        for label, args in commands(state).items():
            cases[label] = (args, None, None)
        store_list = ["snapshot", "list", "--json", "--data", str(data)]
        cases["lamina snapshot list"] = (store_list, None, None)
        if repo is not None:
            cases["restic snapshots"] = (
                [],
                None,
                ["restic", "-r", str(repo), "snapshots", "--json"],
            )
            cases["restic version"] = ([], None, ["restic", "version"])
        figures = measure(cases, opts.repeat)
        print(f"{'command':<26} {'wall ms':>8} {'cpu ms':>8}  target")
        for label, (wall, cpu) in figures.items():
            if label in FLOORS or label.startswith("restic"):
                note = "(floor)" if label in FLOORS else "(peer)"
            elif label == "lamina snapshot list" and "restic snapshots" in figures:
                peer = figures["restic snapshots"]
                note = (
                    f"restic snapshots x{wall / peer[0]:.2f} wall, x{cpu / peer[1]:.2f} cpu: "
                    + ("ok" if cpu <= peer[1] else "over")
                )
            else:
                note = f"{TARGET_MS} ms cpu: " + ("ok" if cpu <= TARGET_MS else "over")
            print(f"{label:<26} {wall:8.0f} {cpu:8.0f}  {note}")
        print("key derivation (a sealed key file / a restic password), cpu ms:")
        kdf = key_derivations(3)
        for label, ms in kdf.items():
            print(f"  {label:<36} {ms:6.0f}")
        imports: dict[str, list[tuple[str, float]]] = {}
        for label, (args, _, argv) in cases.items():
            if label in FLOORS or argv is not None:
                continue
            imports[label] = heaviest_imports(args, opts.top)
            heavy = ", ".join(f"{n} {ms:.0f}" for n, ms in imports[label])
            print(f"{label:<26} imports (ms): {heavy}")
    doc: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "repeat": opts.repeat,
        "target_ms": TARGET_MS,
        "goal_commands": list(commands(Path("state"))),
        "host": machine,
        "git": {"at_start": git_revision()},
        "figures": {label: {"wall_ms": w, "cpu_ms": c} for label, (w, c) in figures.items()},
        "key_derivation_cpu_ms": kdf,
        "heaviest_imports_ms": imports,
    }
    opts.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"figures kept in {opts.output}")


if __name__ == "__main__":
    main()
