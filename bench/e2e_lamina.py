"""Lamina's side of bench.e2e: a server and an agent on the corpus, and the policy's view of what a restore must give back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import method
from bench.common import (
    CommandFailed,
    Ran,
    TreeSize,
    tree_size,
)
from bench.e2e_procs import Cli, Server, children_cpu, login
from bench.verify import Manifest


def policy_view(m: Manifest, root: Path) -> Manifest:
    """What a CVD under the default policy holds: the corpus minus the 'excluded' class.

    Files classed excluded are not uploaded; folders are kept (empty) and, where every path
    below is excluded (``/var/log``), nothing under them is listed (lamina.agent.sync).
    The rule set is the one the agent picks for ``root`` (by its os-release, if any).
    """
    from lamina.layers import rules as lamina_rules

    try:
        from lamina.agent.facts import os_release

        rules = lamina_rules.for_os(os_release(root))
    except (ImportError, AttributeError):  # an older Lamina: one rule set for every Linux
        rules = lamina_rules.builtin("linux")
    out = Manifest()
    pruned: list[str] = []
    for rel in sorted(m.entries):
        if any(rel.startswith(p + "/") for p in pruned):
            continue
        path = "/" + rel
        is_dir = m.entries[rel][0] == "dir"
        if rules.classify(path) == "excluded" and not is_dir:
            continue
        if is_dir and rules.prunable(path):
            pruned.append(rel)
        out.entries[rel] = m.entries[rel]
        out.meta[rel] = m.meta[rel]
    for key, rels in m.links.items():
        kept = [r for r in rels if r in out.entries]
        if kept:
            out.links[key] = kept
    return out


@dataclass
class Results:
    figures: dict[str, dict[str, float | None]] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    layer_update: dict[str, Any] = field(default_factory=dict)

    def record(self, key: str, tool: str, value: float | None) -> None:
        self.figures.setdefault(key, {})[tool] = value

    def detail(self, tool: str, key: str, value: Any) -> None:
        self.details.setdefault(tool, {})[key] = value


class LaminaE2E:
    """Server, admin and one agent whose root is the corpus."""

    def __init__(self, work: Path, env: dict[str, str], corpus: Path) -> None:
        self.work = work
        self.corpus = corpus
        self.server = Server(work / "server", work / "server.log", env)
        self.admin = Cli(work / "config-admin", env)
        self.agent = Cli(work / "config-agent", env)
        self.state = work / "agent-state"
        self.cvd = ""
        self.version = ""

    def setup(self, start_timeout: float = 60) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.server.start(start_timeout)
        started = time.perf_counter() - t0
        login(self.admin, self.server.url)
        policy = self.admin.json("policy", "create", "bench")
        token = self.admin.json("token", "create", "--policy", "bench", "--expires", "1h")["token"]
        enrolled = self.agent.json(
            "agent",
            "enroll",
            "--server",
            self.server.url,
            "--token",
            token,
            "--root",
            self.corpus,
            "--state",
            self.state,
        )
        if enrolled.get("state") != "active":
            raise CommandFailed(f"the token's policy did not centralize the device: {enrolled}")
        status = self.agent.json("agent", "status", "--state", self.state)
        self.cvd = status.get("cvd_id") or ""
        cvds = self.admin.json("cvd", "list")
        if not self.cvd and len(cvds) == 1:
            self.cvd = cvds[0]["id"]
        self.version = self.agent.run("version").stdout.strip()
        return {
            "server_start_s": round(started, 2),
            "policy": policy,
            "device": enrolled,
            "cvds": cvds,
        }

    def cycle(self, *, sync: bool) -> tuple[Ran, dict[str, Any], dict[str, float]]:
        s0, c0 = self.server.cpu(), children_cpu()
        args = ["agent", "run", "--once", "--state", self.state, "--json"]
        r = self.agent.run(*args, *(["--sync"] if sync else []), sync_first=True)
        cpu = {
            "agent_cpu_s": children_cpu() - c0,
            "server_cpu_s": self.server.cpu() - s0,
            "agent_peak_rss": float(r.peak_rss or 0),
            # with its worker processes (a sync's small files read on a second core)
            "agent_tree_peak_rss": float(r.tree_peak_rss or 0),
        }
        doc: dict[str, Any] = json.loads(r.stdout)
        return r, doc, cpu

    def restore(self, out: Path) -> tuple[Ran, dict[str, Any], dict[str, float]]:
        s0, c0 = self.server.cpu(), children_cpu()
        r = self.admin.run(
            "cvd",
            "restore",
            self.cvd,
            "--output",
            out,
            "--json",
            *method.exact_restore_flags(),
            sync_first=True,
        )
        cpu = {"client_cpu_s": children_cpu() - c0, "server_cpu_s": self.server.cpu() - s0}
        return r, json.loads(r.stdout), cpu

    def store_stats(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.admin.json("store", "stats", "--data", self.server.data)
        return doc

    def store_size(self) -> TreeSize:
        return tree_size(self.server.data, skip=[self.server.data / "cache"])

    def parts_on_disk(self) -> dict[str, int]:
        parts = {}
        for child in sorted(self.server.data.iterdir()):
            parts[child.name] = tree_size(child).disk if child.is_dir() else child.stat().st_size
        parts["agent-state (client side, not counted)"] = tree_size(self.state).disk
        return parts
