"""The README's performance table, written from the results files.

``python -m bench.report`` prints it (Markdown); ``python -m bench.report --readme``
rewrites the block of README.md between the two markers below, leaving the rest of the
file as it is. One table per corpus (``usr``: the /usr sample, ``small``: many small
files), each row a figure with Lamina's and restic's median and their min-max over the
passes, the ratio of the medians, issue 12's goal (bench/goals.py) and whether it is met;
then, per results file, what it was measured on: date, passes, commit, CPU model, cores,
memory, disk, load average at the start, restic's and borg's versions. Rows of the other
goals (the agent's memory at 1,000,000 files, the load test) follow when their results
files exist. Nothing is measured here: a figure missing from the results files is shown
as not measured.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import goals, method
from bench.common import BENCH, ROOT, human_bytes
from bench.host import disk_label

BEGIN = "<!-- bench-report:begin (python -m bench.report --readme writes this block) -->"
END = "<!-- bench-report:end -->"

CORPORA = {"usr": "a sample of /usr", "small": "many small files (under 4 KiB)"}


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str  # "s", "B", or "s/GiB" (CPU seconds per GiB)


ENGINE_ROWS = [
    Row("initial_backup_s", "engine: initial backup", "s"),
    Row("unchanged_backup_s", "engine: unchanged re-backup", "s"),
    Row("changed_backup_s", "engine: after ~1% change", "s"),
    Row("restore_s", "engine: full restore", "s"),
    Row("endpoint2_backup_s", "engine: 2nd 95%-similar endpoint", "s"),
    Row("store_bytes", "engine: store size", "B"),
]
E2E_ROWS = [
    Row("initial_backup_s", "end to end: first sync (centralization)", "s"),
    Row("unchanged_backup_s", "end to end: unchanged", "s"),
    Row("changed_backup_s", "end to end: after ~1% change", "s"),
    Row("restore_s", "end to end: full restore through the server", "s"),
    Row("store_bytes", "end to end: store size", "B"),
    Row("first_cpu_per_gib_s", "first sync: CPU per GiB (agent / restic)", "s/GiB"),
    Row("first_server_cpu_per_gib_s", "first sync: server CPU per GiB", "s/GiB"),
]


def load(path: Path) -> dict[str, Any] | None:
    """A results file, or None when it is absent (that bench was not run)."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return doc


def _cell(cell: dict[str, Any] | None, unit: str) -> str:
    if unit == "s/GiB":
        text = method.spread(cell, "s", human_bytes)
        return text if text == "—" else text.replace(" s", " s/GiB", 1)
    return method.spread(cell, unit, human_bytes)


def _ratio(spread: dict[str, Any], key: str) -> float | None:
    row = spread.get(key, {})
    lamina = (row.get("lamina") or {}).get("median")
    restic = (row.get("restic") or {}).get("median")
    return lamina / restic if lamina is not None and restic else None


def figure_rows(
    doc: dict[str, Any], rows: Sequence[Row], table: dict[str, goals.Goal]
) -> list[str]:
    """Markdown rows: figure, Lamina, restic, ratio, goal, met."""
    spread = doc.get("spread") or {}
    out = []
    for row in rows:
        cells = spread.get(row.key, {})
        ratio = _ratio(spread, row.key)
        lamina = (cells.get("lamina") or {}).get("median")
        goal, met = goals.verdict(table.get(row.key), ratio, lamina)
        out.append(
            f"| {row.label} | {_cell(cells.get('lamina'), row.unit)} | "
            f"{_cell(cells.get('restic'), row.unit)} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} | {goal} | {_bold(met)} |"
        )
    return out


def _bold(met: str) -> str:
    return f"**{met}**" if met == "no" else met


def layer_row(doc: dict[str, Any]) -> str | None:
    """The layer update: downloaded / changed bytes, the median over the passes that ran it."""
    runs = [
        p["layer_update"]
        for p in doc.get("passes", [])
        if p.get("layer_update") and p["layer_update"].get("downloaded_per_changed") is not None
    ]
    if not runs:
        return None
    ratios = [r["downloaded_per_changed"] for r in runs]
    mid = sorted(runs, key=lambda r: r["downloaded_per_changed"])[(len(runs) - 1) // 2]
    ratio = statistics.median(ratios)
    low, high = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    spread = f" ({low}-{high})" if low != high else ""
    goal, met = goals.verdict(goals.LAYER_UPDATE, ratio, None)
    return (
        f"| layer update: bytes downloaded / bytes changed | "
        f"{human_bytes(mid['downloaded_bytes'] or 0)} / {human_bytes(mid['changed_bytes'])} | — | "
        f"{ratio:.2f}{spread} | {goal} | {_bold(met)} |"
    )


def _first_pass(doc: dict[str, Any]) -> dict[str, Any]:
    passes = doc.get("passes") or [{}]
    first: dict[str, Any] = passes[0]
    return first


def _commit(doc: dict[str, Any]) -> str:
    git = doc.get("git") or _first_pass(doc).get("git") or {}
    if git.get("at_start"):
        end = git.get("at_end")
        return str(git["at_start"]) + (
            f" (at the end: {end})" if end and end != git["at_start"] else ""
        )
    lamina = (_first_pass(doc).get("tools") or {}).get("lamina")
    version = lamina.get("version") if isinstance(lamina, dict) else lamina
    found = re.search(r"\(git ([^)]+)\)", version or "")
    return found.group(1) if found else "not recorded"


def _versions(doc: dict[str, Any]) -> str:
    tools = _first_pass(doc).get("tools") or {}
    out = []
    for name in ("restic", "borg"):
        v = tools.get(name)
        v = v.get("version") if isinstance(v, dict) else v
        if v:
            out.append(" ".join(str(v).split()[:2]))
    return ", ".join(out) or "no peer"


def host_line(name: str, doc: dict[str, Any]) -> str:
    """What one results file was measured on, in one Markdown list item."""
    host = doc.get("host")
    first = _first_pass(doc)
    machine = first.get("machine") or {}
    corpus = first.get("corpus") or {}
    loads = [p.get("machine", {}).get("load_at_start", [None])[0] for p in doc.get("passes", [])]
    loads = [x for x in loads if x is not None]
    if host:
        cpu = f"{host.get('cpu_model') or 'CPU not recorded'}, {host.get('cores')} cores"
        if host.get("memory_bytes"):
            cpu += f", {host['memory_bytes'] / 2**30:.0f} GiB of memory"
        disk = disk_label(host.get("disk") or {})
        for sch in host.get("page_out") or []:
            if sch.get("idle_s") is not None:
                disk += f"; the kernel pages out memory idle for {sch['idle_s']:.0f} s (DAMON)"
        start_load = (host.get("load_at_start") or [None])[0]
    else:
        cpu = f"{machine.get('cpus')} cores (CPU model not recorded)"
        disk = "disk not recorded"
        start_load = loads[0] if loads else None
    load_text = "not recorded" if start_load is None else f"{start_load:.1f}"
    if len(loads) > 1:
        load_text += f" (each pass's start: {min(loads):.1f}-{max(loads):.1f})"
    size = (
        f"{corpus.get('files', 0):,} files, {human_bytes(corpus.get('apparent', 0))}"
        if corpus
        else "corpus not recorded"
    )
    return (
        f"- `bench/{name}`: {str(doc.get('date', '?'))[:16].replace('T', ' ')} UTC, "
        f"{_count(doc.get('runs', len(doc.get('passes', []))), 'pass', 'passes')}, {size}; commit "
        f"{_commit(doc)}; {cpu}; {disk}; load average (1 min) at the start {load_text}; "
        f"{_versions(doc)}; {machine.get('platform') or (host or {}).get('platform', '')}"
        + (f"; restores into {machine['restore_target']}" if machine.get("restore_target") else "")
    )


def corpus_section(bench: Path, kind: str) -> list[str]:
    """One corpus's table and the hosts of its results files."""
    engine_name = method.results_path(Path("results.json"), kind).name
    e2e_name = method.results_path(Path("results-e2e.json"), kind).name
    engine, e2e = load(bench / engine_name), load(bench / e2e_name)
    lines = [f"#### Corpus `{kind}`: {CORPORA[kind]}", ""]
    if engine is None and e2e is None:
        return [*lines, "Not measured yet.", ""]
    lines += [
        "| figure | Lamina | restic | Lamina / restic | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    if engine is not None:
        lines += figure_rows(engine, ENGINE_ROWS, goals.ENGINE)
    if e2e is not None:
        lines += figure_rows(e2e, E2E_ROWS, goals.E2E)
        layer = layer_row(e2e)
        if layer:
            lines.append(layer)
    lines += ["", "Measured on:", ""]
    lines += [host_line(n, d) for n, d in ((engine_name, engine), (e2e_name, e2e)) if d]
    lines += [
        f"- `bench/{n}`: not measured" for n, d in ((engine_name, engine), (e2e_name, e2e)) if not d
    ]
    return [*lines, ""]


def other_goals(bench: Path) -> list[str]:
    """The goals measured by their own benches: the agent's memory and the load test."""
    rows = []
    rss = load(bench / "results-agent-rss.json")
    if isinstance(rss, list) and rss:
        top = max(rss, key=lambda r: r.get("files", 0))
        mib = (top.get("first") or {}).get("agent_peak_rss_mib")
        if mib is not None:
            met = "yes" if mib * 2**20 <= 150e6 else "**no**"
            rows.append(
                f"| agent peak RSS with its worker processes, first sync of {top['files']:,} files "
                f"(`results-agent-rss.json`) | {mib:.1f} MiB | ≤ 150 MB | {met} |"
            )
    rows += startup_rows(bench)
    load_doc = load(bench / "results-load.json")
    runs = (
        [] if not isinstance(load_doc, dict) else [load_doc, *(load_doc.get("separate_runs") or [])]
    )
    phases = [(run, ph) for run in runs for ph in run.get("phases") or []]
    for run, ph in phases:
        servers = _count(ph.get("servers"), "server", "servers")
        where = f"`bench-load` {ph.get('name')}, {ph.get('endpoints')} endpoints, {servers}"
        priority = (run.get("args") or {}).get("agent_priority")
        if priority:  # SCHED_IDLE agents model a fleet whose agents have machines of their own
            where += f", agents at {priority} priority, {_commit(run)}"
        # the agents' exact p95 (bench.load_seen); files before it have the histogram's bucket
        exact = (ph.get("agent_polls") or {}).get("p95_ms")
        own = ((ph.get("agent_polls") or {}).get("less_own_wait") or {}).get("p95_ms")
        p95 = exact if exact is not None else ph.get("poll_p95_ms")
        upd = ph.get("uploaded_per_distinct")
        peak = ph.get("server_peak_rss")
        rows += [
            f"| {where}: errors | {ph.get('errors')} | 0 | {'yes' if ph.get('errors') == 0 else '**no**'} |",
            f"| {where}: uploaded / distinct bytes | "
            + ("—" if upd is None else f"{upd:.2f}")
            + f" | ≤ 1.2 | {_yes(upd is not None and upd <= 1.2)} |",
            f"| {where}: p95 of agent polls | "
            + (
                f"{exact:.1f} ms (exact, as the agents saw them; less their own wait for a "
                f"core: {own:.1f} ms)"
                if exact is not None and own is not None
                else f"{exact:.1f} ms (exact, as the agents saw them)"
                if exact is not None
                else "—"
                if p95 is None
                else ("> 10 s" if p95 == float("inf") else f"{p95:.0f} ms")
            )
            + f" | < 100 ms | {_yes(p95 is not None and p95 < 100)} |",
            f"| {where}: server peak RSS | "
            + ("—" if peak is None else f"{peak / 2**20:.0f} MiB")
            + f" | ≤ 500 MB | {_yes(peak is not None and peak <= 500e6)} |",
        ]
    if not rows:
        return []
    return [
        "#### Other goals",
        "",
        "| figure | measured | goal | met |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def startup_rows(bench: Path) -> list[str]:
    """The start-up goal (CPU time of the commands endpoints and people run most), from
    ``bench.startup``'s results file."""
    doc = load(bench / "results-startup.json")
    if not isinstance(doc, dict):
        return []
    target = doc.get("target_ms", 150)
    rows = []
    for label in doc.get("goal_commands") or []:
        cpu = ((doc.get("figures") or {}).get(label) or {}).get("cpu_ms")
        if cpu is None:
            continue
        rows.append(
            f"| start-up: `{label}`, CPU time (median of {doc.get('repeat')}, "
            f"`results-startup.json`, {_commit(doc)}) | {cpu:.0f} ms | ≤ {target:g} ms "
            f"| {_yes(cpu <= target)} |"
        )
    return rows


def _count(n: Any, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render(bench: Path) -> str:
    """The whole block, without its markers."""
    lines = [
        "Written by `python -m bench.report` from `bench/results*.json`; every figure is the "
        "median of its passes with min-max beside it, the tools' order rotated between passes "
        "(bench/README.md). Ratios are Lamina's median over restic's: below 1, Lamina is faster "
        "or smaller. The goals are issue 12's. Times are wall clock: a pass on a loaded host "
        "(see each file's load average) is slower for every tool, so the ratios say more "
        "than the seconds.",
        "",
    ]
    for kind in CORPORA:
        lines += corpus_section(bench, kind)
    lines += other_goals(bench)
    return "\n".join(lines).rstrip() + "\n"


def rewrite(readme: Path, block: str) -> bool:
    """Replace the text between the markers; True when the file changed."""
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(
            f"bench.report: {readme} has no block to rewrite; add the two lines\n{BEGIN}\n{END}\n"
            "where the table belongs"
        )
    new = text[: start + len(BEGIN)] + "\n" + block + text[end:]
    if new == text:
        return False
    readme.write_text(new)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.report", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--readme", action="store_true", help="rewrite README.md's marked block")
    ap.add_argument("--bench-dir", type=Path, default=BENCH, help="where the results files are")
    ap.add_argument("--readme-path", type=Path, default=ROOT / "README.md", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    block = render(args.bench_dir)
    if not args.readme:
        sys.stdout.write(block)
        return 0
    changed = rewrite(args.readme_path, block)
    print(f"{args.readme_path}: {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
