"""How bench.run and bench.e2e repeat, summarise and print their figures.

Each figure is the median of ``--runs`` passes (3 by default), each pass on a fresh
corpus and fresh repositories, with the tools' order rotated between passes (pass
``i`` starts with tool ``i``), so no tool always runs first on a cold machine or last
after the others' write-back. Min and max are printed beside the median; every pass's
full results are kept in the results file. Ratios are of the medians.

The second corpus, ``small``: many small files (100,000 under 4 KiB by default),
generated from a seed, so every pass and every machine backs up the same bytes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Files per folder of the small-files corpus (and folders per parent folder).
SMALL_PER_DIR = 100
SMALL_MAX = 4096
WORDS = [f"w{i:03d}" for i in range(300)]

Figures = dict[str, dict[str, float | None]]


def add_pass_args(ap: argparse.ArgumentParser, order: str = "the tools' order rotated") -> None:
    """The options every comparing bench takes: passes, corpora, the small-files count."""
    ap.add_argument(
        "--runs",
        type=int,
        default=3,
        help=f"passes per corpus, {order}; figures are medians (default 3)",
    )
    ap.add_argument(
        "--corpora",
        default=None,
        help="comma-separated: usr (parts of /usr, or --corpus) and small "
        "(--small-files files under 4 KiB); default both (usr only with --corpus)",
    )
    ap.add_argument(
        "--small-files",
        type=int,
        default=None,
        help="files in the small-files corpus (default 100000; 10000 with --quick)",
    )


def check_pass_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check and complete what :func:`add_pass_args` and the corpus options gave: the list of
    corpora, the small-files count and the /usr budget (``--quick`` makes both small)."""
    corpora = args.corpora or ("usr" if args.corpus else "usr,small")
    args.corpora = [c.strip() for c in corpora.split(",") if c.strip()]
    if not args.corpora or any(c not in ("usr", "small") for c in args.corpora):
        ap.error(f"--corpora: choose from usr,small, not {corpora!r}")
    if args.runs < 1:
        ap.error("--runs: at least 1")
    if args.small_files is None:
        args.small_files = 10_000 if args.quick else 100_000
    if args.size_mb is None and (args.corpus is None or args.quick):
        args.size_mb = 100.0 if args.quick else 1024.0


def exact_restore_flags() -> list[str]:
    """Lamina's restore flags that keep what restic and borg keep: owners (as root), setuid/setgid
    bits, device nodes and FIFOs. Off by default in Lamina; the bench compares like with like."""
    flags = ["--special-files"]
    if os.geteuid() == 0:
        flags.append("--same-owner")
    return flags


def rotated(names: Sequence[str], i: int) -> list[str]:
    """The tools' order in pass ``i``: pass 0 as given, then each one starts in turn."""
    k = i % len(names) if names else 0
    return [*names[k:], *names[:k]]


def build_small_files(root: Path, count: int, seed: int) -> dict[str, Any]:
    """``count`` files of 0 to 4095 bytes under ``root`` (100 per folder, two levels deep);
    half text-like (compressible), half random bytes. The same for a given seed."""
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        d = (
            root
            / f"d{i // (SMALL_PER_DIR * SMALL_PER_DIR):03d}"
            / f"e{(i // SMALL_PER_DIR) % SMALL_PER_DIR:02d}"
        )
        if i % SMALL_PER_DIR == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = rng.randrange(SMALL_MAX)
        if i % 2:
            data = rng.randbytes(size)
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(size // 4 + 1)).encode()
            data = text[:size]
        (d / f"f{i:06d}.{'bin' if i % 2 else 'txt'}").write_bytes(data)
        total += size
    return {"small_files": count, "small_bytes": total, "seed": seed}


def summarize(passes: Sequence[Figures]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per figure and tool: the median, min and max over the passes, and every value."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    keys = {k for p in passes for k in p}
    for key in sorted(keys):
        tools = {t for p in passes for t in p.get(key, {})}
        for tool in sorted(tools):
            values = [p.get(key, {}).get(tool) for p in passes]
            got = [v for v in values if v is not None]
            out.setdefault(key, {})[tool] = {
                "median": statistics.median(got) if got else None,
                "min": min(got) if got else None,
                "max": max(got) if got else None,
                "values": values,
            }
    return out


def medians(summary: dict[str, dict[str, dict[str, Any]]]) -> Figures:
    return {k: {t: v["median"] for t, v in row.items()} for k, row in summary.items()}


def spread(cell: dict[str, Any] | None, unit: str, human_bytes: Any) -> str:
    """``median (min-max)``, or the one value when all passes agree or there was one."""
    if cell is None or cell["median"] is None:
        return "—"

    def f(v: float) -> str:
        return f"{v:.2f}" if unit == "s" else human_bytes(v)

    med = f(cell["median"]) + (" s" if unit == "s" else "")
    if len([v for v in cell["values"] if v is not None]) < 2 or cell["min"] == cell["max"]:
        return med
    return f"{med} ({f(cell['min'])}-{f(cell['max'])})"


def results_path(output: Path, kind: str) -> Path:
    """``--output`` for the usr corpus; ``results-small.json`` beside it for the small one."""
    return output if kind == "usr" else output.with_name(f"{output.stem}-{kind}{output.suffix}")


def write_results(
    output: Path,
    kind: str,
    *,
    started: dt.datetime,
    seconds: float,
    passes: list[dict[str, Any]],
    failures: list[str],
    ratios: Callable[[Figures], Any],
    host: dict[str, Any],
    git: dict[str, str | None],
) -> Path:
    """One corpus's results file: the medians and their ratios, the spread, every pass."""
    summary = summarize([p["figures"] for p in passes])
    figures = medians(summary)
    doc = {
        "corpus_kind": kind,
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(seconds, 1),
        "runs": len(passes),
        "method": (__doc__ or "").split("\n\n")[1].replace("\n", " "),
        "host": host,
        "git": git,
        "figures": figures,
        "ratios": ratios(figures),
        "spread": summary,
        "passes": passes,
        "failures": failures,
    }
    out = results_path(output, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return out
