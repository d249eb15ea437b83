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
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import method
from bench.common import (
    ROOT,
    CommandFailed,
    Ran,
    TreeSize,
    clean_env,
    human_bytes,
    prepare_work,
    rmtree,
    say,
    tree_size,
    warm_up,
    warn,
)
from bench.corpus import DEFAULT_GROUPS, build_corpus, copy_tree, mutate
from bench.run import print_rows
from bench.tools import Restic
from bench.verify import Manifest, compare, manifest

BENCH = ROOT / "bench"
DEFAULT_WORK = BENCH / "work" / "e2e"
DEFAULT_RESULTS = BENCH / "results-e2e.json"
ADMIN_PASSWORD = "bench-admin-password"  # a throwaway server's first admin
LAMINA_TIMEOUT = 3600.0  # no single command of a default-size run comes near this


def lamina_exe() -> str:
    exe = Path(sys.executable).parent / "lamina"
    return os.fspath(exe) if exe.exists() else (shutil.which("lamina") or "lamina")


def git_revision() -> str | None:
    """The checkout's revision, plus a hash of uncommitted changes to src/: what the
    figures belong to (compared at start and end, since src/ may change during a run)."""

    def git(*args: str) -> bytes:
        return subprocess.run(
            ["git", "-C", os.fspath(ROOT), *args], capture_output=True, check=True, timeout=30
        ).stdout

    try:
        rev = git("describe", "--always", "--dirty").decode().strip()
        diff = git("diff", "HEAD", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev} (src diff {hashlib.sha1(diff).hexdigest()[:10]})" if diff else rev


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (0 if it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    """One ``lamina server`` on loopback; stopped (TERM, then KILL) by ``stop``."""

    data: Path
    log: Path
    env: dict[str, str]
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Server:
        argv = [lamina_exe(), "server", "--data", os.fspath(self.data)]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), *self.extra]
        env = {**self.env, "LAMINA_ADMIN_PASSWORD": ADMIN_PASSWORD}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CommandFailed(
                    f"lamina server exited {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/api/v1/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise CommandFailed(f"lamina server did not answer in {timeout:.0f} s:\n{self.log_tail()}")

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid) if self.proc else 0.0

    def rss(self) -> int:
        """Resident memory of the server process now (bytes)."""
        if not self.proc:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


# --------------------------------------------------------------------------- the CLI


class Cli:
    """The ``lamina`` command with its own config folder (one admin, or one endpoint)."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "XDG_CONFIG_HOME": os.fspath(home)}
        for k in ("LAMINA_URL", "LAMINA_TOKEN", "LAMINA_AGENT_STATE"):
            self.env.pop(k, None)

    def run(
        self,
        *args: str | os.PathLike[str],
        input: str | None = None,
        timeout: float = LAMINA_TIMEOUT,
        sync_first: bool = False,
    ) -> Ran:
        argv = [lamina_exe(), *(os.fspath(a) for a in args)]
        if sync_first:
            os.sync()
        load = os.getloadavg()[0]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, env=self.env, stdin=subprocess.PIPE, stdout=out, stderr=err)
            killer = threading.Timer(timeout, p.kill)
            killer.start()
            try:
                if input is not None and p.stdin is not None:
                    p.stdin.write(input.encode())
                if p.stdin is not None:
                    p.stdin.close()
                # wait4, not wait: the kernel's own account of this process (and the
                # children it reaped): CPU and peak resident memory, exact, not sampled
                _, status, usage = os.wait4(p.pid, 0)
            finally:
                killer.cancel()
            seconds = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        if p.returncode == -signal.SIGKILL and seconds >= timeout:
            raise CommandFailed(f"timed out after {timeout:.0f} s: {' '.join(argv)}")
        if p.returncode != 0:
            tail = "\n".join(stderr.strip().splitlines()[-40:]) or "(no stderr)"
            raise CommandFailed(
                f"command failed (exit {p.returncode}, {seconds:.1f}s): {' '.join(argv)}\n"
                f"--- stderr (last 40 lines) ---\n{tail}"
            )
        return Ran(
            seconds,
            stdout,
            stderr,
            p.returncode,
            load,
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss=usage.ru_maxrss * 1024,
        )

    def json(self, *args: str | os.PathLike[str], **kw: Any) -> Any:
        return json.loads(self.run(*args, "--json", **kw).stdout)


def login(admin: Cli, url: str) -> None:
    admin.run(
        "login",
        url,
        "--user",
        "admin",
        "--password-stdin",
        input=ADMIN_PASSWORD + "\n",
        timeout=300,
    )


# --------------------------------------------------------------------------- verification


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


# --------------------------------------------------------------------------- the run

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
    ("first_peak_rss_bytes", "   first sync: Lamina agent peak RSS", "B"),
]


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


# --------------------------------------------------------------------------- layer update

LAYER_MB = 150.0  # the reference endpoint: this much of the corpus (all of it when smaller)


def copy_sample(src: Path, dst: Path, budget: float, seed: int) -> dict[str, int]:
    """Regular files and symlinks of ``src`` copied to ``dst`` (modes and times kept),
    picked at random (seeded) until ``budget`` bytes; all of it when it is smaller."""
    picks: list[tuple[str, int, bool]] = []
    for dirpath, _dirs, names in os.walk(src):
        for name in names:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode):
                picks.append((os.path.relpath(p, src), st.st_size, stat.S_ISLNK(st.st_mode)))
    picks.sort()
    random.Random(seed).shuffle(picks)
    total = files = 0
    for rel, size, is_link in picks:
        if not is_link and total + size > budget:
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if is_link:
            os.symlink(os.readlink(src / rel), out)
        else:
            shutil.copy2(src / rel, out)
            total += size
        files += 1
    return {"files": files, "bytes": total}


def change_bytes(root: Path, fraction: float, seed: int) -> dict[str, Any]:
    """Overwrite about ``fraction`` of the bytes under ``root``, same sizes: a region in
    the middle of the 4 largest files (most of it) and 16 small files (4 to 256 KiB)."""
    rng = random.Random(seed)
    files = sorted(
        (p.stat().st_size, p)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_nlink == 1
    )
    total = sum(s for s, _ in files)
    target = total * fraction
    large = [p for s, p in files[-4:] if s >= 256 * 1024]
    small = [p for s, p in files if 4096 <= s <= 256 * 1024]
    small = rng.sample(small, min(16, len(small)))
    plan: list[tuple[Path, int]] = []
    for p in small:
        plan.append((p, max(64, p.stat().st_size // 8)))
    rest = max(0.0, target - sum(n for _, n in plan))
    for p in large:
        plan.append((p, min(p.stat().st_size // 2, int(rest / len(large)))))
    changed: list[dict[str, Any]] = []
    for p, n in plan:
        if n <= 0:
            continue
        mode = p.stat().st_mode
        if not mode & stat.S_IWUSR:
            os.chmod(p, stat.S_IMODE(mode) | stat.S_IWUSR)
        size = p.stat().st_size
        off = (size - n) // 2
        with open(p, "r+b") as f:
            f.seek(off)
            f.write(rng.randbytes(n))
        changed.append(
            {"path": os.fspath(p.relative_to(root)), "size": size, "offset": off, "bytes": n}
        )
    return {
        "tree_bytes": total,
        "changed_bytes": sum(c["bytes"] for c in changed),
        "large_files": len([c for c in changed if c["size"] > 256 * 1024]),
        "small_files": len([c for c in changed if c["size"] <= 256 * 1024]),
        "files": changed,
    }


def sha256(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def layer_update(
    lam: LaminaE2E, corpus: Path, work: Path, seed: int, layer_mb: float = LAYER_MB
) -> dict[str, Any]:
    """Capture a base layer v1 from a reference endpoint (a sample of the corpus) and apply
    it to a target endpoint (a copy of the same tree); change ~1% of the reference's bytes,
    capture v2, deliver it: how many bytes the target downloads against how many changed."""
    base = work / "layers"
    ref_root, tgt_root = base / "ref" / "root", base / "tgt" / "root"
    copied = copy_sample(corpus, ref_root, layer_mb * 1024 * 1024, seed)
    tgt_root.parent.mkdir(parents=True)
    copy_tree(ref_root, tgt_root)
    admin, url = lam.admin, lam.server.url
    ref_token = admin.json("token", "create", "--policy", "bench", "--reference")["token"]
    tgt_token = admin.json("token", "create", "--policy", "bench")["token"]

    def enroll(name: str, token: str, root: Path) -> tuple[Cli, Path, str]:
        cli, state = Cli(base / name / "config", lam.agent.env), base / name / "state"
        before = {c["id"] for c in admin.json("cvd", "list")}
        cli.run(
            "agent", "enroll", "--server", url, "--token", token, "--root", root, "--state", state
        )
        cvd = cli.json("agent", "status", "--state", state).get("cvd_id") or ""
        if not cvd:
            [cvd] = [c["id"] for c in admin.json("cvd", "list") if c["id"] not in before]
        return cli, state, cvd

    ref, ref_state, ref_cvd = enroll("ref", ref_token, ref_root)
    ref.run("agent", "run", "--once", "--state", ref_state)
    v1 = admin.json("layer", "capture", ref_cvd, "--name", "bench-base")
    tgt, tgt_state, tgt_cvd = enroll("tgt", tgt_token, tgt_root)
    tgt.run("agent", "run", "--once", "--state", tgt_state)
    [a1] = admin.json("layer", "assign", tgt_cvd, "--base", "bench-base:1")
    tgt.run("agent", "run", "--once", "--state", tgt_state)
    tgt.run("agent", "boot", "--state", tgt_state)
    tgt.run("agent", "run", "--once", "--sync", "--state", tgt_state)

    changes = change_bytes(ref_root, 0.01, seed)
    ref.run("agent", "run", "--once", "--sync", "--state", ref_state)
    v2 = admin.json("layer", "capture", ref_cvd, "--update", "bench-base")
    [a2] = admin.json("layer", "assign", tgt_cvd, "--base", "bench-base:2")
    if not a2.get("task"):
        raise CommandFailed(f"assigning v2 made no task: {a2}")
    t0 = time.perf_counter()
    tgt.run("agent", "run", "--once", "--state", tgt_state, sync_first=True)
    stage_s = time.perf_counter() - t0
    task = admin.json("task", "show", a2["task"])
    result = task.get("result") or {}
    tgt.run("agent", "boot", "--state", tgt_state)
    differ = [
        c["path"]
        for c in changes["files"]
        if sha256(tgt_root / c["path"]) != sha256(ref_root / c["path"])
    ]
    layer_bytes = v2["versions"][-1].get("bytes") or v1["versions"][0].get("bytes")
    down, changed = result.get("downloaded_bytes"), changes["changed_bytes"]
    out = {
        "reference_tree": copied,
        "layer_files": v2["versions"][-1].get("files"),
        "layer_bytes": layer_bytes,
        "changed_bytes": changed,
        "changed_files": len(changes["files"]),
        "downloaded_bytes": down,
        "seeded_bytes": result.get("seeded_bytes"),
        "delta_files": result.get("delta_files"),
        "downloaded_per_changed": down / changed if down is not None and changed else None,
        "downloaded_per_layer": down / layer_bytes if down is not None and layer_bytes else None,
        "stage_s": round(stage_s, 2),
        "verified": not differ,
        "differing_files": differ,
        "v1_assign": a1,
        "task": task,
        "changes": changes,
    }
    rmtree(base)
    return out


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
    if args.size_mb is None:
        args.size_mb = (
            (100.0 if args.quick else 1024.0) if args.corpus is None or args.quick else None
        )
    corpora = args.corpora or ("usr" if args.corpus else "usr,small")
    args.corpora = [c.strip() for c in corpora.split(",") if c.strip()]
    if not args.corpora or any(c not in ("usr", "small") for c in args.corpora):
        ap.error(f"--corpora: choose from usr,small, not {corpora!r}")
    if args.runs < 1:
        ap.error("--runs: at least 1")
    if args.small_files is None:
        args.small_files = 10_000 if args.quick else 100_000
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
    figures = method.medians(summary)
    total = time.perf_counter() - t_start
    print_table(last[0], summary, last[1], args.quick, last[2], kind, args.runs)
    doc = {
        "corpus_kind": kind,
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(total, 1),
        "runs": args.runs,
        "method": (method.__doc__ or "").split("\n\n")[1].replace("\n", " "),
        "figures": figures,
        "ratios": ratios(figures),
        "spread": summary,
        "passes": passes,
        "failures": failures,
    }
    out: Path = args.output
    if kind != "usr":
        out = out.with_name(f"{out.stem}-{kind}{out.suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
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
    corpus = work / "corpus"
    if kind == "small":
        say(f"generating {args.small_files} small files in {corpus}", "bold")
        corpus_extra: dict[str, Any] = method.build_small_files(corpus, args.small_files, args.seed)
        c_size = tree_size(corpus)
        warm_up(corpus)
        group_reports: list[Any] = []
    else:
        corpus_extra, group_reports, c_size = _usr_corpus(args, corpus)

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


def _usr_corpus(
    args: argparse.Namespace, corpus: Path
) -> tuple[dict[str, Any], list[Any], TreeSize]:
    groups = [(os.fspath(args.corpus.resolve()), 1.0)] if args.corpus else DEFAULT_GROUPS
    if args.corpus and not args.corpus.is_dir():
        raise SystemExit(f"--corpus {args.corpus}: not a folder")
    budget = args.size_mb * 1024 * 1024 if args.size_mb else float("inf")
    say(
        f"building the corpus in {corpus} "
        f"({'all of it' if budget == float('inf') else human_bytes(budget)})",
        "bold",
    )
    t0 = time.perf_counter()
    base = os.fspath(args.corpus.resolve()) if args.corpus else "/"
    corpus_extra, group_reports = build_corpus(corpus, groups, budget, base)
    c_size = tree_size(corpus)
    say(
        f"  {c_size.files} files, {c_size.dirs} folders, {c_size.symlinks} symlinks, "
        f"{human_bytes(c_size.apparent)} in {time.perf_counter() - t0:.1f} s"
    )
    warm_up(corpus)
    return corpus_extra, list(group_reports), c_size


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

    def lamina_backup(self, key: str, *, sync: bool) -> None:
        res = self.res
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
    res.record("first_peak_rss_bytes", "lamina", cpu1["agent_peak_rss"])
    say(
        f"  first sync per GiB: agent CPU {cpu1['agent_cpu_s'] / gib:.2f} s, server CPU "
        f"{cpu1['server_cpu_s'] / gib:.2f} s; agent peak RSS "
        f"{human_bytes(cpu1['agent_peak_rss'])}"
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
    p.pair(
        lambda: p.step("lamina restore", lambda: lamina_restore(p, expected)),
        lambda: p.step("restic restore", lambda: restic_restore(p, expected)),
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


def lamina_restore(p: Pass, expected: Manifest) -> None:
    out = p.work / "restore" / "lamina"
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
    rmtree(out)


def restic_restore(p: Pass, expected: Manifest) -> None:
    if p.restic is None:
        return
    out = p.work / "restore" / "restic"
    out.mkdir(parents=True)
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
    rmtree(out)


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
        "faster / smaller."
    )
    header = ["figure", *names, *(["lamina/restic"] if with_restic else [])]
    rows = []
    for key, label, unit in FIGURES:
        vals = summary.get(key, {})
        row = [label] + [method.spread(vals.get(n), unit, human_bytes) for n in names]
        if with_restic:
            r = rat.get(key)
            row.append("—" if r is None else f"{r:.2f}")
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
