"""The figures of one bench.e2e pass, one function each, run in order by run_steps."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import freshfs
from bench.common import (
    CommandFailed,
    human_bytes,
    say,
    tree_size,
    warm_inputs,
    warn,
)
from bench.corpus import mutate
from bench.e2e_lamina import LaminaE2E, Results, policy_view
from bench.e2e_layer import layer_update
from bench.e2e_procs import children_cpu
from bench.tools import Restic
from bench.verify import Manifest, compare, manifest


@dataclass
class Pass:
    """One pass's tools and bookkeeping, shared by the per-figure steps below."""

    args: argparse.Namespace
    res: Results
    lam: LaminaE2E
    restic: Restic | None
    corpus: Path
    work: Path
    restic_first: bool
    corpus_gib: float

    def pair(self, lamina: Callable[[], object], restic_fn: Callable[[], object]) -> None:
        """Run one step for both tools, restic first when this pass says so."""
        for fn in (restic_fn, lamina) if self.restic_first else (lamina, restic_fn):
            fn()

    def step(self, name: str, fn: Callable[[], object]) -> bool:
        """Run ``fn``; a failure is recorded under ``name`` and the pass goes on."""
        try:
            fn()
            return True
        except (CommandFailed, json.JSONDecodeError, OSError) as e:
            self.res.failures.append(f"{name}: {e}")
            say(f"{name} FAILED:\n{e}", "bold red")
            if not self.lam.server.alive():
                say(f"--- server log ---\n{self.lam.server.log_tail()}", "red")
            return False

    def warm(self, tool: str, key: str, *trees: Path) -> None:
        """Read ``trees`` and the tool's own files just before its timed command: the host
        pages out what was idle for a minute (``bench.run.Run.warm``). Lamina's are the
        server's data folder and the agent's state, restic's its repository and cache."""
        if tool == "lamina":
            own = [self.lam.server.data, self.lam.state]
        else:
            assert self.restic is not None
            own = [self.restic.repo, *self.restic.cache_dirs()]
        warm_inputs(self.res.details, tool, key, (*trees, *own))

    def lamina_backup(self, key: str, *, sync: bool) -> None:
        res = self.res
        self.warm("lamina", key, self.corpus)
        r, doc, cpu = self.lam.cycle(sync=sync)
        stats = doc.get("last_sync_stats") or {}
        if not doc.get("synced"):
            raise CommandFailed(f"the agent cycle did not sync: {doc}")
        if stats.get("errors"):
            warn(f"the agent reported errors: {stats['errors'][:5]}")
        res.record(key, "lamina", r.seconds)
        res.detail(
            "lamina",
            key,
            {"seconds": r.seconds, "load_before": r.load, **cpu, "agent": doc},
        )
        say(
            f"  lamina  {r.seconds:8.2f} s   (agent CPU {cpu['agent_cpu_s']:.1f} s, server CPU "
            f"{cpu['server_cpu_s']:.1f} s; read {stats.get('files_read')} files, "
            f"uploaded {human_bytes(stats.get('uploaded_bytes') or 0)})"
        )

    def restic_backup(self, key: str) -> None:
        if self.restic is None:
            return
        res = self.res
        self.warm("restic", key, self.corpus)
        c0 = children_cpu()
        r, summary = self.restic.backup(self.corpus, key, None)
        res.record(key, "restic", r.seconds)
        if key == "initial_backup_s":
            res.record("first_cpu_per_gib_s", "restic", (children_cpu() - c0) / self.corpus_gib)
        res.detail(
            "restic",
            key,
            {
                "seconds": r.seconds,
                "load_before": r.load,
                "cpu_s": children_cpu() - c0,
                "summary": summary,
            },
        )
        say(f"  restic  {r.seconds:8.2f} s   (CPU {children_cpu() - c0:.1f} s)")

    def backups(self, key: str, what: str, *, sync: bool) -> None:
        """Both tools' backups for figure ``key``, ``what`` naming the step in failures."""
        self.pair(
            lambda: self.step(f"lamina {what} sync", lambda: self.lamina_backup(key, sync=sync)),
            lambda: self.step(f"restic {what} backup", lambda: self.restic_backup(key)),
        )

    def sizes(self, key: str) -> None:
        lam = self.lam
        self.res.detail(
            "lamina", key, {**dataclasses.asdict(lam.store_size()), "parts": lam.parts_on_disk()}
        )
        if self.restic:
            self.res.detail("restic", key, dataclasses.asdict(self.restic.repo_size()))


def run_steps(
    args: argparse.Namespace,
    res: Results,
    lam: LaminaE2E,
    restic: Restic | None,
    corpus: Path,
    work: Path,
    restic_first: bool = False,
) -> int:
    """Every step for Lamina and restic, restic first when ``restic_first`` (passes rotate)."""
    corpus_gib = tree_size(corpus).apparent / 2**30 or 1.0
    p = Pass(args, res, lam, restic, corpus, work, restic_first, corpus_gib)
    if not set_up(p):
        return 1
    if args.layer_only:
        p.step("layer update", lambda: layer_step(args, res, lam, corpus, work))
        return 0
    if not first_backup(p):
        return 1
    p.step("fixed cost", lambda: fixed_cost(p))
    unchanged_backup(p)
    changed_backup(p)
    store_figures(p)
    full_restore(p)
    print_store_sizes(p)
    p.step("layer update", lambda: layer_step(args, res, lam, corpus, work))
    return 0


def set_up(p: Pass) -> bool:
    """Lamina's server, admin and enrolled agent; restic's repository (dropped if init fails)."""
    lam, res = p.lam, p.res
    say("setup: lamina server, login, policy, token --policy, agent enroll", "bold")
    try:
        info = lam.setup()
    except CommandFailed as e:
        res.failures.append(f"lamina setup: {e}")
        say(f"lamina setup FAILED:\n{e}\n--- server log ---\n{lam.server.log_tail()}", "bold red")
        return False
    res.detail("lamina", "setup", info)
    say(f"  server {lam.server.url} up in {info['server_start_s']} s, cvd {lam.cvd}")
    if p.restic:
        try:
            res.detail("restic", "init_s", p.restic.init().seconds)
        except CommandFailed as e:
            say(f"restic init failed, Lamina only:\n{e}", "red")
            p.restic = None
    return True


def first_backup(p: Pass) -> bool:
    """Figure 1 and the first sync's CPU, RSS and bytes sent; False when Lamina's failed."""
    res = p.res
    say("1. first backup (Lamina: centralization by the agent's first cycle)", "bold")
    first_ok: list[bool] = []
    p.pair(
        lambda: first_ok.append(
            p.step("lamina first sync", lambda: p.lamina_backup("initial_backup_s", sync=False))
        ),
        lambda: p.step("restic initial backup", lambda: p.restic_backup("initial_backup_s")),
    )
    if not first_ok[0]:
        return False
    gib = p.corpus_gib
    cpu1 = res.details["lamina"]["initial_backup_s"]
    res.record("first_cpu_per_gib_s", "lamina", cpu1["agent_cpu_s"] / gib)
    res.record("first_server_cpu_per_gib_s", "lamina", cpu1["server_cpu_s"] / gib)
    res.record("first_peak_rss_bytes", "lamina", cpu1["agent_tree_peak_rss"])
    say(
        f"  first sync per GiB: agent CPU {cpu1['agent_cpu_s'] / gib:.2f} s, server CPU "
        f"{cpu1['server_cpu_s'] / gib:.2f} s; agent peak RSS with its worker processes "
        f"{human_bytes(cpu1['agent_tree_peak_rss'])} (the agent alone "
        f"{human_bytes(cpu1['agent_peak_rss'])})"
    )
    p.sizes("size_after_initial")
    # restic 0.14's data_added counts bytes before compression: no restic figure here.
    first = res.details["lamina"]["initial_backup_s"]["agent"].get("last_sync_stats") or {}
    res.record("initial_sent_bytes", "lamina", first.get("uploaded_bytes"))
    return True


def fixed_cost(p: Pass) -> None:
    """The idle cycle: the best of three agent cycles with nothing due, and restic snapshots."""
    best = float("inf")
    for _ in range(3):
        r = p.lam.agent.run("agent", "run", "--once", "--state", p.lam.state, "--json")
        if json.loads(r.stdout).get("synced"):
            warn("the idle cycle synced (the policy interval has passed?)")
        best = min(best, r.seconds)
    p.res.record("idle_cycle_s", "lamina", best)
    if p.restic:
        p.res.record("idle_cycle_s", "restic", min(p.restic.noop().seconds for _ in range(3)))


def unchanged_backup(p: Pass) -> None:
    """Figure 2: re-backup with nothing changed."""
    say("2. re-backup, nothing changed", "bold")
    p.backups("unchanged_backup_s", "unchanged", sync=True)


def changed_backup(p: Pass) -> None:
    """Figure 3: ~1% of the corpus changed, then backed up; the bytes Lamina sent for it."""
    res = p.res
    changes = mutate(p.corpus, 0.01, p.args.seed, replace_half=False)
    res.detail("corpus", "change_1pct", changes)
    say(
        f"3. backup after changing {changes['modified']} files "
        f"(+{changes['added']} new, -{changes['deleted']} deleted, "
        f"{human_bytes(changes['bytes_written'] + changes['added_bytes'])} written)",
        "bold",
    )
    p.backups("changed_backup_s", "changed", sync=True)
    changed = res.details["lamina"].get("changed_backup_s", {}).get("agent", {})
    res.record(
        "changed_sent_bytes", "lamina", (changed.get("last_sync_stats") or {}).get("uploaded_bytes")
    )


def store_figures(p: Pass) -> None:
    """Figure 5 and the store's growth from the change, with each tool's own stats."""
    res, lam = p.res, p.lam
    p.sizes("size_after_change")
    for tool in ("lamina", "restic"):
        d = res.details.get(tool, {})
        if "size_after_initial" in d and "size_after_change" in d:
            a, b = d["size_after_initial"]["disk"], d["size_after_change"]["disk"]
            res.record("change_growth_bytes", tool, b - a)
            res.record("store_bytes", tool, b)
    try:
        res.detail("lamina", "store_stats", lam.store_stats())
        res.detail("lamina", "parts_on_disk", lam.parts_on_disk())
        res.detail("lamina", "server_rss_bytes", lam.server.rss())
    except (CommandFailed, json.JSONDecodeError, OSError) as e:
        warn(f"lamina store stats: {e}")
    if p.restic:
        try:
            res.detail("restic", "stats", p.restic.extra_stats())
        except (CommandFailed, json.JSONDecodeError, OSError) as e:
            warn(f"restic stats: {e}")


def full_restore(p: Pass) -> None:
    """Figure 4: each tool restores the latest snapshot, verified against the corpus."""
    res = p.res
    say("4. full restore of the latest snapshot", "bold")
    t0 = time.perf_counter()
    full = manifest(p.corpus)
    expected = policy_view(full, p.corpus)
    dropped = len(full.entries) - len(expected.entries)
    say(
        f"  (hashed the corpus in {time.perf_counter() - t0:.1f} s; the default policy "
        f"excludes {dropped} of its {len(full.entries)} entries)"
    )
    res.detail("corpus", "excluded_by_default_policy", dropped)
    # Each restore goes to a filesystem of its own (bench.freshfs): creating 40,000 files
    # within minutes of a mass deletion costs several times the system time on ext4
    # without a journal, which made a tool's figure depend on when the last deletion was.
    size = freshfs.size_for(tree_size(p.corpus))

    def fresh(tool: str, fn: Callable[[Path], None]) -> Callable[[], None]:
        def run() -> None:
            with freshfs.fresh_target(p.work, tool, size) as (out, where):
                p.res.detail(tool, "restore_target", where)
                p.warm(tool, "restore_s")
                fn(out)

        return run

    p.pair(
        lambda: p.step("lamina restore", fresh("lamina", lambda o: lamina_restore(p, expected, o))),
        lambda: (
            p.restic is not None
            and p.step("restic restore", fresh("restic", lambda o: restic_restore(p, expected, o)))
        ),
    )


def verify_restore(p: Pass, expected: Manifest, tool: str, root: Path) -> None:
    verdict = compare(expected, manifest(root), owners=os.geteuid() == 0)
    p.res.verification[tool] = verdict.to_json()
    if verdict.ok:
        say(f"  {tool:<7} restore verified identical", "green")
        return
    say(
        f"  {tool:<7} {len(verdict.content)} content and {len(verdict.metadata)} "
        "metadata differences",
        "red",
    )
    for line in (verdict.content + verdict.metadata)[:15]:
        say(f"      {line}", "red")
    if tool == "lamina":
        p.res.failures.append("lamina: THE RESTORE DIFFERS FROM THE CORPUS")
    else:
        warn(f"{tool}'s restore differs from the corpus (a benchmark or peer issue)")


def lamina_restore(p: Pass, expected: Manifest, out: Path) -> None:
    r, doc, cpu = p.lam.restore(out)
    p.res.record("restore_s", "lamina", r.seconds)
    p.res.detail(
        "lamina",
        "restore_s",
        {"seconds": r.seconds, "load_before": r.load, **cpu, "summary": doc},
    )
    say(
        f"  lamina  {r.seconds:8.2f} s   (client CPU {cpu['client_cpu_s']:.1f} s, server "
        f"CPU {cpu['server_cpu_s']:.1f} s; {doc.get('files')} files, "
        f"{human_bytes(doc.get('bytes') or 0)})"
    )
    if doc.get("errors"):
        warn(f"lamina restore reported {len(doc['errors'])} errors: {doc['errors'][:5]}")
    verify_restore(p, expected, "lamina", out)


def restic_restore(p: Pass, expected: Manifest, out: Path) -> None:
    if p.restic is None:
        return
    c0 = children_cpu()
    r, inner = p.restic.restore("latest", out, p.corpus)
    p.res.record("restore_s", "restic", r.seconds)
    p.res.detail(
        "restic",
        "restore_s",
        {"seconds": r.seconds, "load_before": r.load, "cpu_s": children_cpu() - c0},
    )
    say(f"  restic  {r.seconds:8.2f} s   (CPU {children_cpu() - c0:.1f} s)")
    verify_restore(p, expected, "restic", inner)


def print_store_sizes(p: Pass) -> None:
    say("5. store sizes", "bold")
    for tool in ("lamina", "restic"):
        b = p.res.figures.get("store_bytes", {}).get(tool)
        if b is not None:
            say(f"  {tool:<7} {human_bytes(b)}")


def layer_step(
    args: argparse.Namespace, res: Results, lam: LaminaE2E, corpus: Path, work: Path
) -> None:
    say("6. layer update: bytes downloaded vs bytes changed (Lamina only)", "bold")
    res.layer_update = layer_update(lam, corpus, work, args.seed, args.layer_mb)
    if not res.layer_update["verified"]:
        res.failures.append(
            "layer update: changed files differ from the reference after boot: "
            f"{res.layer_update['differing_files'][:5]}"
        )
