"""Lamina against restic and borg on the same tree, in the same run.

``python -m bench.run`` (``make bench``) from the project root. See bench/README.md.

Steps, each run for every tool in the order lamina, restic, borg before the next
step starts (so every tool sees the same data in the same state):

1. initial backup of the corpus
2. re-backup, nothing changed
3. backup after ~1% of the files changed (appended, overwritten, added, deleted)
4. full restore of the latest snapshot into an empty folder (Lamina's is verified)
5. size of the repository on disk
6. a second endpoint: a copy of the corpus with ~5% of the files changed or
   replaced, backed up into the same repository (time, and how much it grew)

Everything lives under bench/work/ (git-ignored), which is wiped at the start.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import freshfs, goals, host, method
from bench.common import (
    BENCH,
    CONSOLE,
    DEFAULT_WORK,
    CommandFailed,
    TreeSize,
    clean_env,
    human_bytes,
    prepare_work,
    rmtree,
    say,
    tree_size,
    warm_inputs,
    warm_up,
    warn,
)
from bench.corpus import Corpus, copy_tree, make_corpus, mutate
from bench.e2e_procs import git_revision
from bench.freshfs import restore_target
from bench.tools import Tool, find_tools
from bench.verify import compare, manifest

DEFAULT_RESULTS = BENCH / "results.json"
ALL_TOOLS = ("lamina", "restic", "borg")


FIGURES: list[tuple[str, str, str]] = [
    # key, label, unit
    ("initial_backup_s", "1. initial backup", "s"),
    ("unchanged_backup_s", "2. re-backup, unchanged", "s"),
    ("changed_backup_s", "3. backup after ~1% change", "s"),
    ("restore_s", "4. full restore (latest)", "s"),
    ("store_bytes", "5. store size on disk (after 3 backups)", "B"),
    ("endpoint2_backup_s", "6a. 2nd endpoint (95% similar): backup", "s"),
    ("endpoint2_growth_bytes", "6b. 2nd endpoint: store growth", "B"),
    # context, not in the brief's list
    ("change_growth_bytes", "   store growth from the ~1% change", "B"),
    ("open_list_s", "   fixed cost: open repo + list snapshots", "s"),
]


@dataclass
class Run:
    args: argparse.Namespace
    work: Path
    tools: list[Tool]
    figures: dict[str, dict[str, float | None]] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, key: str, tool: Tool, value: float | None) -> None:
        self.figures.setdefault(key, {})[tool.name] = value

    def live(self) -> list[Tool]:
        return [t for t in self.tools if t.failed is None]

    def warm(self, t: Tool, step: str, *trees: Path) -> None:
        """Read ``trees`` and ``t``'s repository and caches just before ``t``'s timed step.

        The bench host pages out what was not touched for a minute (a DAMON ``pageout``
        scheme, recorded by ``bench.host.page_out_schemes``), so what a tool reads would otherwise be cached or not
        depending on how long the tools before it took: after restic and borg, Lamina's
        initial backup read the corpus from the disk (``perf``: virtio kicks in its own
        context) and took 7.3-7.7 s against 5.2 s when it went first."""
        warm_inputs(self.details, t.name, step, (*trees, t.repo, *t.cache_dirs()))

    def each(self, step: str, fn: Callable[[Tool], None]) -> None:
        """Run ``fn`` for every tool still standing; a failure drops only that tool."""
        for t in self.live():
            try:
                fn(t)
            except (CommandFailed, json.JSONDecodeError, OSError) as e:
                t.failed = f"{step}: {e}"
                self.failures.append(f"{t.name}: {t.failed}")
                say(f"{t.name} FAILED at {step}:\n{e}", "bold red")


def step_backup(run: Run, key: str, src: Path, label: str, endpoint: str | None = None) -> None:
    def one(t: Tool) -> None:
        run.warm(t, key, src)
        r, summary = t.backup(src, label, endpoint)
        run.record(key, t, r.seconds)
        run.details.setdefault(t.name, {})[key] = {
            "seconds": r.seconds,
            "load_before": r.load,
            "summary": summary,
        }
        say(f"  {t.name:<7} {r.seconds:8.2f} s")

    run.each(key, one)


def record_size(run: Run, key: str) -> None:
    def one(t: Tool) -> None:
        sz = t.repo_size()
        run.details.setdefault(t.name, {})[key] = dataclasses.asdict(sz)

    run.each(key, one)


def size_of(run: Run, t: Tool, key: str) -> int | None:
    d = run.details.get(t.name, {}).get(key)
    return None if d is None else int(d["disk"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--size-mb",
        type=float,
        default=None,
        help="corpus size budget in MiB (default 1024; 100 with --quick; "
        "all of --corpus if that is given)",
    )
    ap.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="copy this folder as the corpus instead of parts of /usr",
    )
    ap.add_argument("--quick", action="store_true", help="a ~100 MiB corpus")
    method.add_pass_args(ap)
    ap.add_argument(
        "--tools",
        default=",".join(ALL_TOOLS),
        help="comma-separated subset of lamina,restic,borg (default all)",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the deterministic changes")
    ap.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help="scratch folder, wiped at start (default bench/work)",
    )
    ap.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_RESULTS,
        help="where to write the JSON results (default bench/results.json)",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="leave corpus and repositories in the work folder afterwards",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, profile Lamina's backup and restore of the corpus "
        "(all threads, cProfile; see bench/prof.py)",
    )
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    bad = [n for n in names if n not in ALL_TOOLS]
    if bad or not names:
        ap.error(f"--tools: unknown {bad}; choose from {','.join(ALL_TOOLS)}")
    args.tool_names = [n for n in ALL_TOOLS if n in names]
    method.check_pass_args(ap, args)
    return args


def figure_init(run: Run) -> None:
    """init (untimed in the table, recorded)."""
    say("init", "bold")

    def init(t: Tool) -> None:
        r = t.init()
        run.details.setdefault(t.name, {})["init_s"] = r.seconds

    run.each("init", init)


def figure_initial_backup(run: Run, corpus: Path) -> None:
    say("1. initial backup", "bold")
    step_backup(run, "initial_backup_s", corpus, "s1")
    record_size(run, "size_after_initial")


def figure_fixed_cost(run: Run) -> None:
    """The fixed cost of one invocation: open the store and list it, best of three."""

    def noop(t: Tool) -> None:
        run.warm(t, "open_list_s")
        best = min(t.noop().seconds for _ in range(3))
        run.record("open_list_s", t, best)

    run.each("open_list_s", noop)


def figure_unchanged(run: Run, corpus: Path) -> None:
    say("2. re-backup, nothing changed", "bold")
    step_backup(run, "unchanged_backup_s", corpus, "s2")


def figure_changed(run: Run, corpus: Path, seed: int) -> dict[str, Any]:
    """About 1% of the files changed: the backup's time and the store's growth."""
    changes = mutate(corpus, 0.01, seed, replace_half=False)
    say(
        f"3. backup after changing {changes['modified']} files "
        f"(+{changes['added']} new, -{changes['deleted']} deleted, "
        f"{human_bytes(changes['bytes_written'] + changes['added_bytes'])} written)",
        "bold",
    )
    step_backup(run, "changed_backup_s", corpus, "s3")
    record_size(run, "size_after_change")
    for t in run.live():
        a, b = size_of(run, t, "size_after_initial"), size_of(run, t, "size_after_change")
        run.record("change_growth_bytes", t, None if a is None or b is None else b - a)
        run.record("store_bytes", t, b)
    return changes


def figure_restore(run: Run, corpus: Path, work: Path) -> None:
    """A full restore of the latest snapshot, verified against the corpus."""
    say("4. full restore of the latest snapshot", "bold")
    t0 = time.perf_counter()
    expected = manifest(corpus)
    say(f"  (hashed the corpus for verification in {time.perf_counter() - t0:.1f} s)")
    is_root = os.geteuid() == 0

    # Each restore goes to a filesystem of its own (bench.freshfs): creating 40,000 files
    # after another tree's deletion costs several times the system time on this host.
    size = freshfs.size_for(tree_size(corpus))

    def restore(t: Tool) -> None:
        with freshfs.fresh_target(work, t.name, size) as (out, where):
            run.details.setdefault(t.name, {})["restore_target"] = where
            restore_into(t, out)

    def restore_into(t: Tool, out: Path) -> None:
        run.warm(t, "restore_s")
        r, inner = t.restore("s3", out, corpus)
        run.record("restore_s", t, r.seconds)
        run.details.setdefault(t.name, {})["restore_s"] = {
            "seconds": r.seconds,
            "load_before": r.load,
        }
        verdict = compare(expected, manifest(inner), owners=is_root)
        run.verification[t.name] = verdict.to_json()
        status = (
            "verified identical"
            if verdict.ok
            else (
                f"{len(verdict.content)} content and {len(verdict.metadata)} metadata differences"
            )
        )
        say(f"  {t.name:<7} {r.seconds:8.2f} s   {status}", "" if verdict.ok else "red")
        if not verdict.ok:
            for line in (verdict.content + verdict.metadata)[:15]:
                say(f"      {line}", "red")
            if t.name == "lamina":
                msg = "LAMINA'S RESTORE DIFFERS FROM THE CORPUS"
                run.failures.append(f"lamina: {msg}")
                say(f"  {msg}", "bold red")
            else:
                warn(f"{t.name}'s restore differs from the corpus (a benchmark or peer issue)")

    run.each("restore_s", restore)


def _extra_stats(run: Run, t: Tool, key: str) -> None:
    try:
        run.details[t.name][key] = t.extra_stats()
    except (CommandFailed, json.JSONDecodeError, OSError) as e:
        warn(f"{t.name}: could not read its own statistics: {e}")


def figure_sizes(run: Run) -> None:
    """Store sizes, recorded after the changed backup."""
    say("5. store sizes", "bold")
    for t in run.live():
        say(f"  {t.name:<7} {human_bytes(size_of(run, t, 'size_after_change') or 0)}")
        _extra_stats(run, t, "stats_after_change")


def figure_second_endpoint(run: Run, corpus: Path, work: Path, seed: int) -> dict[str, Any]:
    """A second endpoint, 95% like the first: what it adds to the store."""
    corpus2 = work / "corpus2"
    copy_tree(corpus, corpus2)
    changes2 = mutate(corpus2, 0.05, seed + 1, replace_half=True)
    warm_up(corpus2)
    say(
        f"6. second endpoint: {changes2['modified']} files changed "
        f"({changes2['replaced']} rewritten), +{changes2['added']} new, "
        f"-{changes2['deleted']} deleted",
        "bold",
    )
    step_backup(run, "endpoint2_backup_s", corpus2, "endpoint-b", endpoint="endpoint-b")
    record_size(run, "size_after_endpoint2")
    for t in run.live():
        a, b = size_of(run, t, "size_after_change"), size_of(run, t, "size_after_endpoint2")
        run.record("endpoint2_growth_bytes", t, None if a is None or b is None else b - a)
        _extra_stats(run, t, "stats_after_endpoint2")
    return changes2


def results(
    run: Run,
    corpus: Corpus,
    skipped: dict[str, str],
    changes: dict[str, Any],
    changes2: dict[str, Any],
    started: dt.datetime,
    start_load: list[float],
    total: float,
) -> dict[str, Any]:
    """The results document (``--output``)."""
    args = run.args
    return {
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
            "filesystem_note": "corpus and repositories on the work folder's filesystem",
            "restore_target": restore_target(run.details) or freshfs.describe(run.work),
        },
        "tools": {t.name: {"version": t.version, "failed": t.failed} for t in run.tools},
        "skipped_tools": skipped,
        "settings": {
            "lamina": "defaults (zstd level 3, AES-256-GCM, FastCDC); repo size excludes DATA/cache",
            "restic": "defaults of this version (repository v2, compression auto); cache under work/",
            "borg": "defaults of this version (repokey, lz4); cache under work/",
            "sizes": "bytes on disk (st_blocks, like du), tool caches excluded; apparent sizes in details",
        },
        "corpus": {
            **dataclasses.asdict(corpus.size),
            "source": os.fspath(args.corpus) if args.corpus else "/usr subsets",
            "groups": [dataclasses.asdict(g) for g in corpus.groups],
            **corpus.extra,
            "change_1pct": changes,
            "endpoint2_changes": changes2,
        },
        "figures": run.figures,
        "ratios": ratios(run.figures),
        "verification": run.verification,
        "details": run.details,
        "failures": run.failures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    code = 0
    for kind in args.corpora:
        code = max(code, bench_corpus(args, kind))
    return code


def bench_corpus(args: argparse.Namespace, kind: str) -> int:
    """``--runs`` passes over one corpus, the tools' order rotated; medians printed and kept."""
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
    machine = host.describe(args.work)
    rev_start = git_revision()
    passes: list[dict[str, Any]] = []
    failures: list[str] = []
    names: list[str] = []
    c_size: TreeSize | None = None
    for i in range(args.runs):
        order = method.rotated(args.tool_names, i)
        say(f"=== corpus {kind}, pass {i + 1} of {args.runs}: {', '.join(order)}", "bold blue")
        got = one_pass(args, kind, order, last=i == args.runs - 1)
        if got is None:
            return 2
        run, doc, c_size = got
        names = names or [n for n in ALL_TOOLS if any(t.name == n for t in run.tools)]
        passes.append({"pass": i + 1, "order": order, **doc})
        failures += [f"pass {i + 1}: {f}" for f in run.failures]
    assert c_size is not None
    print_table(names, method.summarize([p["figures"] for p in passes]), c_size, args, kind)
    total = time.perf_counter() - t_start
    out = method.write_results(
        args.output,
        kind,
        started=started,
        seconds=total,
        passes=passes,
        failures=failures,
        ratios=ratios,
        host=machine,
        git={"at_start": rev_start, "at_end": git_revision()},
    )
    say(f"results written to {out} ({args.runs} passes, {total:.0f} s)")
    if failures:
        say("FAILURES:\n  " + "\n  ".join(failures), "bold red")
        return 1
    return 0


def one_pass(
    args: argparse.Namespace, kind: str, order: Sequence[str], *, last: bool
) -> tuple[Run, dict[str, Any], TreeSize] | None:
    """One pass: a fresh corpus and fresh repositories, every step for every tool in ``order``."""
    t_start = time.perf_counter()
    start_load = list(os.getloadavg())
    started = dt.datetime.now(dt.UTC)
    work: Path = args.work.resolve()
    tools, skipped = find_tools(order, work, clean_env())
    if not tools:
        say("no tool to benchmark", "bold red")
        return None
    prepare_work(work)
    run = Run(args, work, tools)
    corpus = make_corpus(args, work, kind)
    figure_init(run)
    figure_initial_backup(run, corpus.path)
    figure_fixed_cost(run)
    figure_unchanged(run, corpus.path)
    changes = figure_changed(run, corpus.path, args.seed)
    figure_restore(run, corpus.path, work)
    figure_sizes(run)
    changes2 = figure_second_endpoint(run, corpus.path, work, args.seed)

    total = time.perf_counter() - t_start
    doc = results(run, corpus, skipped, changes, changes2, started, start_load, total)

    if last and args.profile and kind == "usr" and any(t.name == "lamina" for t in tools):
        from bench import prof

        prof.main(["--corpus", os.fspath(corpus.path), "--work", os.fspath(work / "profile")])

    if not (args.keep and last):
        for p in (corpus.path, work / "corpus2", work / "repos", work / "cache", work / "restore"):
            rmtree(p)
    return run, doc, corpus.size


def ratios(figures: method.Figures) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for key, row in figures.items():
        lam = row.get("lamina")
        for peer in ("restic", "borg"):
            other = row.get(peer)
            r = None
            if lam is not None and other:
                r = lam / other
            out.setdefault(key, {})[f"lamina/{peer}"] = r
    return out


def print_table(
    names: list[str],
    summary: dict[str, dict[str, dict[str, Any]]],
    c_size: TreeSize,
    args: argparse.Namespace,
    kind: str,
) -> None:
    rat = ratios(method.medians(summary))
    peers = [p for p in ("restic", "borg") if p in names and "lamina" in names]
    title = (
        f"Corpus {kind}: {c_size.files} files, {human_bytes(c_size.apparent)}"
        f"{' (quick)' if args.quick else ''}. Median of {args.runs} passes (min-max), the tools' "
        "order rotated. Ratios (of medians) < 1: Lamina faster / smaller; goals of issue 12 "
        "bound lamina/restic."
    )
    with_goals = "restic" in peers
    rows = []
    for key, label, unit in FIGURES:
        vals = summary.get(key, {})
        row = [label] + [method.spread(vals.get(n), unit, human_bytes) for n in names]
        for p in peers:
            r = rat.get(key, {}).get(f"lamina/{p}")
            row.append("—" if r is None else f"{r:.2f}")
        if with_goals:
            lamina = vals.get("lamina", {}).get("median")
            row += goals.verdict(
                goals.ENGINE.get(key), rat.get(key, {}).get("lamina/restic"), lamina
            )
        rows.append(row)
    header = ["figure", *names, *[f"lamina/{p}" for p in peers]]
    print_rows(title, header + (["goal", "met"] if with_goals else []), rows)


def print_rows(title: str, header: list[str], rows: list[list[str]]) -> None:
    if CONSOLE is not None:
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        CONSOLE.print(table)
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(title)
        for r in [header, *rows]:
            print(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
            )


if __name__ == "__main__":
    sys.exit(main())
