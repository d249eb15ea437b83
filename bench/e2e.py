"""End to end: a Lamina agent backing up to a Lamina server on loopback, against restic.

``python -m bench.e2e`` (the second half of ``make bench``) from the project root. See
bench/README.md.

The same corpus as bench.run (parts of /usr, built by its corpus builder). Lamina goes the
whole way an endpoint does: ``lamina server`` (embedded default: SQLite and a folder store)
on a free loopback port, an admin logged in through ``lamina login``, a policy and an
enrollment token naming it (so the device is centralized when it enrolls), ``lamina agent
enroll --root CORPUS``, then timed ``lamina agent run --once`` cycles and a ``lamina cvd
restore`` that downloads the tree through the server. restic backs up the same tree into a
local repository at every step (``restic backup``, ``restic restore``).

Steps, each run for Lamina then restic before the next step starts:

1. first backup (for Lamina the centralization: the agent's first cycle uploads everything)
2. re-backup, nothing changed (``agent run --once --sync``)
3. backup after ~1% of the files changed (bench.run's change helper, same seed)
4. full restore into an empty folder (Lamina's is verified against the corpus)
5. store size on disk
6. layer update (Lamina only): a base layer captured from a reference endpoint (a sample of
   the corpus) and applied to a copy; ~1% of the reference's bytes changed, v2 captured
   with ``--update`` and delivered: bytes the target downloads against bytes changed

Everything lives under bench/work/e2e/ (git-ignored), wiped at the start.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import freshfs, goals, host, method
from bench.common import (
    ROOT,
    CommandFailed,
    TreeSize,
    clean_env,
    human_bytes,
    prepare_work,
    rmtree,
    say,
    warn,
)
from bench.corpus import make_corpus
from bench.e2e_lamina import LaminaE2E, Results
from bench.e2e_layer import LAYER_MB
from bench.e2e_procs import git_revision
from bench.e2e_steps import run_steps
from bench.freshfs import restore_target
from bench.run import print_rows
from bench.tools import Restic

BENCH = ROOT / "bench"
DEFAULT_WORK = BENCH / "work" / "e2e"
DEFAULT_RESULTS = BENCH / "results-e2e.json"


FIGURES: list[tuple[str, str, str]] = [
    ("initial_backup_s", "1. first backup (Lamina: centralization)", "s"),
    ("unchanged_backup_s", "2. re-backup, unchanged", "s"),
    ("changed_backup_s", "3. backup after ~1% change", "s"),
    ("restore_s", "4. full restore (Lamina: download via server)", "s"),
    ("store_bytes", "5. store size on disk (after 3 backups)", "B"),
    ("change_growth_bytes", "   store growth from the ~1% change", "B"),
    ("initial_sent_bytes", "   Lamina: bytes uploaded by the first sync", "B"),
    ("changed_sent_bytes", "   Lamina: bytes uploaded after the ~1% change", "B"),
    ("idle_cycle_s", "   fixed cost: idle agent cycle / restic snapshots", "s"),
    ("first_cpu_per_gib_s", "   first sync: CPU s per GiB (Lamina agent / restic)", "s"),
    ("first_server_cpu_per_gib_s", "   first sync: Lamina server CPU s per GiB", "s"),
    ("first_peak_rss_bytes", "   first sync: Lamina agent peak RSS (+ its workers)", "B"),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--size-mb",
        type=float,
        default=None,
        help="corpus size budget in MiB (default 1024; 100 with --quick; "
        "all of --corpus if that is given)",
    )
    ap.add_argument("--corpus", type=Path, default=None, help="copy this folder instead of /usr")
    ap.add_argument("--quick", action="store_true", help="a ~100 MiB corpus")
    ap.add_argument("--no-restic", action="store_true", help="Lamina only")
    method.add_pass_args(ap, "Lamina and restic taking turns to go first")
    ap.add_argument("--seed", type=int, default=1, help="seed of the deterministic changes")
    ap.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help="scratch folder, wiped at start (default bench/work/e2e)",
    )
    ap.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_RESULTS,
        help="where to write the JSON results (default bench/results-e2e.json)",
    )
    ap.add_argument("--keep", action="store_true", help="leave the work folder afterwards")
    ap.add_argument(
        "--layer-only",
        action="store_true",
        help="only step 6, the layer update (with --quick: a small corpus, quick to run)",
    )
    ap.add_argument(
        "--layer-mb",
        type=float,
        default=LAYER_MB,
        help=f"the layer update's reference endpoint in MiB (default {LAYER_MB:g})",
    )
    args = ap.parse_args(argv)
    method.check_pass_args(ap, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    code = 0
    for kind in args.corpora:
        code = max(code, bench_corpus(args, kind))
    return code


def bench_corpus(args: argparse.Namespace, kind: str) -> int:
    """``--runs`` passes over one corpus, Lamina and restic taking turns to go first."""
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
    machine = host.describe(args.work)
    passes: list[dict[str, Any]] = []
    failures: list[str] = []
    code = 0
    last: tuple[Results, TreeSize, bool] | None = None
    for i in range(args.runs):
        restic_first = i % 2 == 1
        say(
            f"=== corpus {kind}, pass {i + 1} of {args.runs}: "
            f"{'restic' if restic_first else 'lamina'} first",
            "bold blue",
        )
        res, doc, c_size, with_restic, pass_code = one_pass(
            args, kind, restic_first, last=i == args.runs - 1
        )
        code = max(code, pass_code)
        passes.append({"pass": i + 1, "restic_first": restic_first, **doc})
        failures += [f"pass {i + 1}: {f}" for f in res.failures]
        last = (res, c_size, with_restic)
    assert last is not None
    summary = method.summarize([p["figures"] for p in passes])
    print_table(last[0], summary, last[1], args.quick, last[2], kind, args.runs)
    total = time.perf_counter() - t_start
    git = {"at_start": passes[0]["git"]["at_start"], "at_end": passes[-1]["git"]["at_end"]}
    out = method.write_results(
        args.output,
        kind,
        started=started,
        seconds=total,
        passes=passes,
        failures=failures,
        ratios=ratios,
        host=machine,
        git=git,
    )
    say(f"results written to {out} ({args.runs} passes, {total:.0f} s)")
    if failures:
        say("FAILURES:\n  " + "\n  ".join(failures), "bold red")
        return 1
    return code


def one_pass(
    args: argparse.Namespace, kind: str, restic_first: bool, *, last: bool
) -> tuple[Results, dict[str, Any], TreeSize, bool, int]:
    """One pass on a fresh corpus, server and repository."""
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
    start_load = list(os.getloadavg())
    work: Path = args.work.resolve()
    env = clean_env()
    res = Results()
    rev_start = git_revision()

    restic: Restic | None = None
    restic_version = None
    if not args.no_restic:
        restic = Restic(work, env)
        try:
            restic_version = restic.available()
        except CommandFailed as e:
            say(str(e), "red")
        if restic_version is None:
            say("restic NOT FOUND: Lamina only (nothing is installed by this benchmark)", "yellow")
            restic = None
        else:
            say(f"restic: {restic_version}")

    prepare_work(work)
    made = make_corpus(args, work, kind)
    corpus, corpus_extra, group_reports, c_size = made.path, made.extra, made.groups, made.size

    lam = LaminaE2E(work / "lamina", env, corpus)
    try:
        code = run_steps(args, res, lam, restic, corpus, work, restic_first)
    finally:
        lam.server.stop()

    total = time.perf_counter() - t_start
    doc = _pass_doc(args, res, lam, restic_version, rev_start, started, start_load, total)
    doc["corpus"] = {
        **dataclasses.asdict(c_size),
        "kind": kind,
        "source": "generated" if kind == "small" else os.fspath(args.corpus or "/usr subsets"),
        "groups": [dataclasses.asdict(g) for g in group_reports],
        **corpus_extra,
    }
    if not (args.keep and last):
        rmtree(work)
    return res, doc, c_size, restic is not None, code


def _pass_doc(
    args: argparse.Namespace,
    res: Results,
    lam: LaminaE2E,
    restic_version: str | None,
    rev_start: str | None,
    started: dt.datetime,
    start_load: list[float],
    total: float,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(total, 1),
        "quick": args.quick,
        "args": {k: (os.fspath(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_at_start": start_load,
            "load_at_end": list(os.getloadavg()),
            "python": sys.version.split()[0],
            "note": "server, agent, restic, corpus and stores on one machine, one filesystem; "
            "Lamina over HTTP on loopback",
            "restore_target": restore_target(res.details) or freshfs.describe(args.work),
        },
        "tools": {"lamina": lam.version, "restic": restic_version},
        "git": {"at_start": rev_start, "at_end": git_revision()},
        "settings": {
            "lamina": "lamina server --data (embedded: SQLite + folder store), default policy "
            "'bench' via token --policy, agent defaults; store size = server --data minus cache",
            "restic": "local repository, defaults of this version; cache under work/, not counted",
            "times": "wall clock of the whole CLI process (start-up included)",
            "cpu": "user + system seconds: the agent's from wait4 (the process and the children "
            "it reaped), the server's from /proc/PID/stat before and after; per GiB of the corpus",
            "rss": "the agent's peak resident memory: ru_maxrss from wait4 (the kernel's "
            "high-water mark, not a sample)",
        },
        "figures": res.figures,
        "ratios": ratios(res.figures),
        "verification": res.verification,
        "layer_update": res.layer_update,
        "details": res.details,
        "failures": res.failures,
    }
    if doc["git"]["at_start"] != doc["git"]["at_end"]:
        warn(f"the checkout changed during the run: {doc['git']}")
    return doc


def ratios(figures: method.Figures) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, row in figures.items():
        a, b = row.get("lamina"), row.get("restic")
        out[key] = a / b if a is not None and b else None
    return out


def print_table(
    res: Results,
    summary: dict[str, dict[str, dict[str, Any]]],
    c_size: TreeSize,
    quick: bool,
    with_restic: bool,
    kind: str,
    runs: int,
) -> None:
    names = ["lamina", *(["restic"] if with_restic else [])]
    rat = ratios(method.medians(summary))
    title = (
        f"End to end (agent -> server on loopback). Corpus {kind}: {c_size.files} files, "
        f"{human_bytes(c_size.apparent)}{' (quick)' if quick else ''}. Median of {runs} "
        "passes (min-max), who goes first alternating. Ratios (of medians) < 1: Lamina "
        "faster / smaller; goals of issue 12."
    )
    header = ["figure", *names, *(["lamina/restic", "goal", "met"] if with_restic else [])]
    rows = []
    for key, label, unit in FIGURES:
        vals = summary.get(key, {})
        row = [label] + [method.spread(vals.get(n), unit, human_bytes) for n in names]
        if with_restic:
            r = rat.get(key)
            row.append("—" if r is None else f"{r:.2f}")
            lamina = vals.get("lamina", {}).get("median")
            row += goals.verdict(goals.E2E.get(key), r, lamina)
        rows.append(row)
    print_rows(title, header, rows)
    lu = res.layer_update
    if lu:

        def pct(x: float | None) -> str:
            return "—" if x is None else f"{100 * x:.2f}%"

        say(
            f"Layer update (base v1 -> v2): layer {human_bytes(lu['layer_bytes'] or 0)} in "
            f"{lu['layer_files']} files; changed {human_bytes(lu['changed_bytes'])} in "
            f"{lu['changed_files']} files; downloaded "
            f"{human_bytes(lu['downloaded_bytes'] or 0)} (seeded from the endpoint "
            f"{human_bytes(lu['seeded_bytes'] or 0)}; {lu.get('delta_files')} files as deltas); "
            "downloaded/changed "
            + (
                "—"
                if lu["downloaded_per_changed"] is None
                else f"{lu['downloaded_per_changed']:.2f}"
            )
            + f", downloaded/layer {pct(lu['downloaded_per_layer'])}; changed files "
            + ("identical to the reference after boot" if lu["verified"] else "DIFFER"),
            "green" if lu["verified"] else "bold red",
        )
    v = res.verification.get("lamina")
    if v is not None:
        say(
            "Lamina restore: "
            + (
                "verified identical to the corpus (minus policy exclusions)"
                if v["ok"]
                else "DIFFERS"
            ),
            "green" if v["ok"] else "bold red",
        )


if __name__ == "__main__":
    sys.exit(main())
