"""The agent's peak memory while it syncs a tree of many small files to a local server.

``python -m bench.agent_rss --files 200000`` builds (once: kept under
``bench/work/rss-files-N``, reused while ``rss-files-N.complete`` is beside it) a tree of N files,
1,000 per folder, half of them empty and half holding a few distinct bytes, then runs
``lamina agent run --once`` against a throwaway local server: a first sync (every file
read) and an unchanged one. For each it prints the agent's peak RSS with its worker
processes' added (``TreeRss``: sampled every 20 ms; the agent's own high-water mark,
``VmHWM``, printed beside it) and CPU (user + system, the workers' included). With
``--files`` given several times, it prints what grows with the file count (MiB per
100,000 files) and extrapolates to 1,000,000.

Nothing is installed and nothing outside ``bench/work`` is written.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_WORK, built_once, clean_env, rmtree, say
from bench.e2e_lamina import LaminaE2E

#: Files per folder: file i is root/dAAA/dBBB/fNNNNNNN.
PER_FOLDER = 1000


def build_tree(root: Path, files: int) -> float:
    """Make the tree of ``files`` files once; seconds spent (0 when it was already there)."""
    return built_once(root, lambda r: _make_tree(r, files))


def _make_tree(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"d{i // (PER_FOLDER * 100):03d}" / f"d{(i // PER_FOLDER) % 100:03d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"f{i:07d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if i % 2:
                os.write(fd, f"file {i}\n".encode())
        finally:
            os.close(fd)


def measure(files: int, work: Path) -> dict[str, Any]:
    tree = work / f"rss-files-{files}"
    built = build_tree(tree, files)
    if built:
        say(f"built {files} files in {tree} in {built:.1f} s")
    run = work / f"rss-run-{files}"
    rmtree(run)
    lam = LaminaE2E(run, clean_env(), tree)
    out: dict[str, Any] = {"files": files}
    try:
        lam.setup(start_timeout=300)
        for name in ("first", "unchanged"):
            r, doc, cpu = lam.cycle(sync=name != "first")
            stats = doc.get("last_sync_stats") or {}
            out[name] = {
                # the agent and its worker processes: what the endpoint gives the sync
                "agent_peak_rss_mib": round(cpu["agent_tree_peak_rss"] / 2**20, 1),
                "agent_alone_peak_rss_mib": round(cpu["agent_peak_rss"] / 2**20, 1),
                "agent_cpu_s": round(cpu["agent_cpu_s"], 2),
                "server_cpu_s": round(cpu["server_cpu_s"], 2),
                "wall_s": round(r.seconds, 2),
                "files_read": stats.get("files_read"),
            }
            say(
                f"{files:>9} files  {name:9s}  agent peak RSS (+ workers) "
                f"{out[name]['agent_peak_rss_mib']:7.1f} MiB (alone "
                f"{out[name]['agent_alone_peak_rss_mib']:.1f})  agent CPU "
                f"{out[name]['agent_cpu_s']:7.2f} s  server CPU {out[name]['server_cpu_s']:7.2f} s"
                f"  read {stats.get('files_read')}"
            )
    finally:
        lam.server.stop()
        rmtree(run)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.agent_rss", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--files", type=int, action="append", help="tree size (repeatable)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    counts = sorted(set(args.files or [200_000]))
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = [measure(n, work) for n in counts]
    if len(results) >= 2:
        lo, hi = results[0], results[-1]
        span = (hi["files"] - lo["files"]) / 100_000
        for name in ("first", "unchanged"):
            slope = (hi[name]["agent_peak_rss_mib"] - lo[name]["agent_peak_rss_mib"]) / span
            at_1m = hi[name]["agent_peak_rss_mib"] + slope * (1_000_000 - hi["files"]) / 100_000
            say(
                f"{name:9s}: {slope:+.1f} MiB per 100,000 files; straight-line guess at "
                f"1,000,000 files: {at_1m:.0f} MiB"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
