"""The processes bench.e2e and bench.load drive: a throwaway Lamina server, the CLI with its own config, and their CPU time."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    CommandFailed,
    Ran,
)

ADMIN_PASSWORD = "bench-admin-password"  # a throwaway server's first admin
LAMINA_TIMEOUT = 3600.0  # no single command of a default-size run comes near this


PAGE = os.sysconf("SC_PAGE_SIZE")


class TreeRss:
    """The peak of a process's and its descendants' resident memory added up, sampled from
    ``/proc`` on a thread while it runs, and the process's own high-water mark (``VmHWM``,
    the last read before it exits).

    ``wait4``'s ``ru_maxrss`` is no measure of a command the bench starts: it is one
    process's (an agent's worker processes are not added to it), and it counts the
    bench's own pages from before the child's ``exec`` (a forked child maps its parent's
    memory): after a pass had grown the bench to ~180 MiB, every agent "peaked" at 179.41
    MiB by it, one that peaked at ~107 MiB too. ``VmHWM`` starts again at ``exec``."""

    PERIOD = 0.02

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        #: the process's own high-water mark since its ``exec`` (bytes; 0: never read)
        self.own_peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.PERIOD):
            self.peak = max(self.peak, self.sample())
            try:
                with open(f"/proc/{self.pid}/status", "rb") as f:
                    hwm = next(x for x in f if x.startswith(b"VmHWM:"))
                self.own_peak = max(self.own_peak, int(hwm.split()[1]) * 1024)
            except (OSError, StopIteration, ValueError, IndexError):
                pass  # not yet exec'd, or exited: its memory is gone from /proc

    def sample(self) -> int:
        """The resident memory of the process and its descendants now, added up (pages
        shared between them counted in each: an upper bound). Children are found through
        each thread's ``/proc/PID/task/TID/children``, not a scan of all of ``/proc``
        (1.4 ms a sample here: 7% of a core every 20 ms, taken from what is measured)."""
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * PAGE
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                        todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
        return total

    def stop(self) -> int:
        """Stop sampling (before the process is reaped: its pid stays its own until then)."""
        self._done.set()
        self._thread.join()
        return self.peak


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


class Cli:
    """The ``lamina`` command with its own config folder (one admin, or one endpoint)."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "XDG_CONFIG_HOME": os.fspath(home)}
        for k in ("LAMINA_URL", "LAMINA_TOKEN", "LAMINA_AGENT_STATE"):
            self.env.pop(k, None)
        #: argv put before the command (e.g. ``py-spy record ... --``, to profile it)
        self.prefix: list[str] = []

    def run(
        self,
        *args: str | os.PathLike[str],
        input: str | None = None,
        timeout: float = LAMINA_TIMEOUT,
        sync_first: bool = False,
    ) -> Ran:
        argv = [*self.prefix, lamina_exe(), *(os.fspath(a) for a in args)]
        if sync_first:
            os.sync()
        load = os.getloadavg()[0]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, env=self.env, stdin=subprocess.PIPE, stdout=out, stderr=err)
            tree = TreeRss(p.pid)
            killer = threading.Timer(timeout, p.kill)
            killer.start()
            try:
                if input is not None and p.stdin is not None:
                    p.stdin.write(input.encode())
                if p.stdin is not None:
                    p.stdin.close()
                # wait4, not wait: the kernel's own account of this process (and the
                # children it reaped): CPU and peak resident memory, exact, not sampled
                # exited but not reaped (its pid cannot be reused) while the sampler stops
                os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
                tree_peak = tree.stop()
                _, status, usage = os.wait4(p.pid, 0)
            finally:
                killer.cancel()
                tree.stop()
            seconds = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        if self.prefix:  # a profiler's own lines ("py-spy> ...") are not the command's
            stdout = "".join(x for x in stdout.splitlines(True) if not x.startswith("py-spy> "))
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
            # ru_maxrss only for a command too short for one sample (see TreeRss)
            peak_rss=tree.own_peak or usage.ru_maxrss * 1024,
            tree_peak_rss=max(tree_peak, tree.own_peak) or usage.ru_maxrss * 1024,
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
