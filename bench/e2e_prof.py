"""Where the fleet path's CPU goes: a first sync, an unchanged one, a ~1% change and a
restore through the server, with ``py-spy`` sampling the server and CPU counted per process.

``python -m bench.e2e_prof --corpus DIR`` (a copy of DIR is synced; DIR is not touched).

The same server, admin and agent as ``bench.e2e`` (``LaminaE2E``). For each sync it
prints the agent's CPU (user + system from ``wait4``) and the server's (``/proc/PID/stat``
before and after), per GiB of the corpus (the restore: the client's CPU, that of
``cvd restore --output``, in the agent's column), and, with ``--profile server`` (the default),
the functions the server spent its busy samples in (``--profile agent``: the agent's, py-spy
starting it, its CPU then included in the agent's figure). Raw stacks go to WORK/*.txt
(py-spy's collapsed format). A/B: run another checkout's ``src`` at the same time
(``PYTHONPATH=OTHER/src``, ``--profile none``, another ``--work``) and compare CPU.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT, Ran, clean_env, rmtree, say, tree_size
from bench.corpus import copy_tree, mutate
from bench.e2e_lamina import LaminaE2E

DEFAULT_WORK = ROOT / "bench" / "work" / "e2e-prof"
STEPS = ("first", "unchanged", "changed", "restore")


def pyspy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return os.fspath(exe) if exe.exists() else shutil.which("py-spy")


def top(stacks: Path, n: int = 30) -> list[tuple[str, float, float]]:
    """(function, self share, inclusive share) of the busiest functions in a collapsed file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = [
            f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0] for f in stack.split(";")
        ]
        total += k
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    if not total:
        return []
    return [(f, own[f] / total, incl[f] / total) for f, _ in incl.most_common(n)]


_FRAMEWORK = (
    "threading.py",
    "asyncio/",
    "anyio/",
    "typer/",
    "uvicorn/",
    "starlette/",
    "fastapi/",
    "contextlib.py",
    "concurrent/",
)


def _ours(f: str) -> bool:
    return not any(x in f for x in _FRAMEWORK) and "<module>" not in f


def restore(lam: LaminaE2E, work: Path) -> tuple[Ran, dict[str, Any], dict[str, float]]:
    """A full restore through the server (``/blobs/read``), timed like a sync."""
    out = work / "restored"
    rmtree(out)
    r, _, cpu = lam.restore(out)
    cpu["agent_cpu_s"] = cpu.pop("client_cpu_s")
    cpu["agent_peak_rss"] = float(r.peak_rss or 0)
    cpu["agent_tree_peak_rss"] = float(r.tree_peak_rss or 0)
    rmtree(out)
    return r, {}, cpu


def sync(
    lam: LaminaE2E,
    name: str,
    work: Path,
    profile: str,
    gib: float,
    gil: bool = False,
    rate: int = 50,
    native: bool = False,
) -> None:
    spy = pyspy()
    out = work / f"{name}.txt"
    rec = None
    if profile == "server" and spy and lam.server.proc:
        rec = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(lam.server.proc.pid),
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--output",
                os.fspath(out),
                *(["--native"] if native else ["--nonblocking"]),
                *(["--gil"] if gil else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
    # the restore's client is the admin's ``cvd restore``
    client = lam.admin if name == "restore" else lam.agent
    if profile == "agent" and spy:
        # py-spy starts the client and samples it (its own CPU is then in the agent's figure)
        client.prefix = [spy, "record", "--format", "raw", "--rate", str(rate), "--subprocesses"]
        client.prefix += [*(["--gil"] if gil else []), "--output", os.fspath(out), "--"]
    r, doc, cpu = restore(lam, work) if name == "restore" else lam.cycle(sync=name != "first")
    client.prefix = []
    if rec is not None:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
    stats = doc.get("last_sync_stats") or {}
    say(
        f"{name:10s} wall {r.seconds:6.2f} s  agent CPU {cpu['agent_cpu_s']:6.2f} s "
        f"({cpu['agent_cpu_s'] / gib:6.2f}/GiB)  server CPU {cpu['server_cpu_s']:6.2f} s "
        f"({cpu['server_cpu_s'] / gib:6.2f}/GiB)  agent RSS {cpu['agent_peak_rss'] / 2**20:.0f} MiB "
        f"(+ workers {cpu['agent_tree_peak_rss'] / 2**20:.0f})  "
        f"read {stats.get('files_read')} files, uploaded {stats.get('uploaded_bytes')} B",
        "bold",
    )
    if profile != "none" and out.exists():
        rows = top(out, 400)
        say("    inclusive (lamina and the libraries it calls):")
        for f, own, incl in [r for r in rows if r[2] >= 0.01 and _ours(r[0])][:45]:
            print(f"    {incl * 100:5.1f}% {own * 100:5.1f}%  {f}")
        say("    self:")
        for f, own, incl in sorted(rows, key=lambda r: -r[1])[:25]:
            print(f"    {incl * 100:5.1f}% {own * 100:5.1f}%  {f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.e2e_prof", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--profile", choices=("server", "agent", "none"), default="server")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (closer to CPU than wall-clock samples)",
    )
    ap.add_argument("--rate", type=int, default=50, help="py-spy's samples per second")
    ap.add_argument(
        "--native",
        action="store_true",
        help="the server's native frames too (py-spy then pauses it for each sample: slower)",
    )
    ap.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"the steps to run, in order, of {','.join(STEPS)} (the first sync always runs)",
    )
    args = ap.parse_args(argv)
    work: Path = args.work.resolve()
    rmtree(work)
    work.mkdir(parents=True)
    corpus = work / "corpus"
    copy_tree(args.corpus, corpus)
    gib = tree_size(corpus).apparent / 2**30 or 1.0
    lam = LaminaE2E(work / "lamina", clean_env(), corpus)
    try:
        lam.setup(start_timeout=300)
        steps = [s for s in STEPS if s in args.steps.split(",")]
        for name in ["first", *[s for s in steps if s != "first"]]:
            if name == "changed":
                mutate(corpus, 0.01, args.seed, replace_half=False)
            sync(lam, name, work, args.profile, gib, args.gil, args.rate, args.native)
    finally:
        lam.server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
