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

``--perf``: Linux ``perf`` samples the profiled process instead (its children too), on CPU
only, and the shares of its CPU by shared object and by native symbol are printed
(WORK/*.perf.data). py-spy counts a thread as busy while it waits in some C calls (an
``fsync``, a queue's lock: 5-10% of a server's samples), and puts the time of the C code a
Python function calls under that function; ``perf`` says how much of the CPU is the
interpreter's own (``libpython``), zstd's, BLAKE3's, SQLite's or the kernel's, but not
which Python function ran (no Python frames before 3.12).

The restore goes into the work folder, where a tree was just deleted: on ext4 without a
journal its figure is then mostly the kernel's inode allocator (``bench.freshfs``). Restore
figures come from ``bench.e2e_restore --freshfs``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
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


#: ``perf``'s samples per second of CPU.
PERF_RATE = 499
_PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)(?:\s+\[[.k]\]\s+(.*?))?\s*$")


def parse_perf_report(text: str) -> list[tuple[float, str, str]]:
    """``(share, shared object, symbol)`` of each line of ``perf report --stdio
    --no-children -g none`` sorted by ``dso`` (symbol ``""``) or ``dso,sym``; shares as
    fractions, comment and blank lines skipped."""
    rows = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _PERF_LINE.match(line)
        if m:
            rows.append((float(m[1]) / 100, m[2], m[3] or ""))
    return rows


def perf_split(data: Path, n: int = 25) -> None:
    """Print the shared objects and native symbols ``data`` (``perf record``) spent its CPU in."""
    for sort, head, k in (("dso", "by shared object", 12), ("dso,sym", "by symbol", n)):
        argv = ["perf", "report", "-i", os.fspath(data), "--stdio", "--no-children"]
        out = subprocess.run(
            [*argv, "-g", "none", "--sort", sort],
            capture_output=True,
            text=True,
        ).stdout
        say(f"    CPU {head} (perf):")
        for share, dso, sym in parse_perf_report(out)[:k]:
            print(f"    {share * 100:5.1f}%  {dso}  {sym}".rstrip())


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
    perf: bool = False,
) -> None:
    spy = pyspy()
    out = work / f"{name}.txt"
    data = work / f"{name}.perf.data"
    rec = None
    if perf and profile == "server" and lam.server.proc:
        pid = str(lam.server.proc.pid)
        with open(work / f"{name}.perf.log", "wb") as said:  # (read if nothing recorded)
            rec = subprocess.Popen(
                ["perf", "record", "-F", str(PERF_RATE), "-p", pid, "-o", os.fspath(data)],
                stdout=subprocess.DEVNULL,
                stderr=said,
            )
        time.sleep(1.0)
    elif profile == "server" and spy and lam.server.proc:
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
    if perf and profile == "agent":  # perf starts the client (its children counted too)
        client.prefix = ["perf", "record", "-F", str(PERF_RATE), "-o", os.fspath(data), "--"]
    elif profile == "agent" and spy:
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
    if perf and profile != "none" and data.exists():
        perf_split(data)
    elif perf and profile != "none":
        log = work / f"{name}.perf.log"
        why = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        say(f"    perf recorded nothing (kernel.perf_event_paranoid?) {why}", "bold red")
    elif profile != "none" and out.exists():
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
        "--perf",
        action="store_true",
        help="sample with Linux perf, on CPU only: the shares of shared objects and native symbols",
    )
    ap.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"the steps to run, in order, of {','.join(STEPS)} (the first sync always runs)",
    )
    args = ap.parse_args(argv)
    if args.perf and not shutil.which("perf"):
        raise SystemExit("--perf needs Linux perf (Debian: linux-perf)")
    if args.perf and (args.native or args.gil):
        raise SystemExit("--native and --gil are py-spy's: not with --perf")
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
            sync(lam, name, work, args.profile, gib, args.gil, args.rate, args.native, args.perf)
    finally:
        lam.server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
