"""Restores through the server, pass after pass, with each pass's CPU split per process.

``python -m bench.e2e_restore --size-mb 300 --passes 4`` builds a share of /usr (as
``bench.e2e``; ``--small-files N``: ``make bench``'s small corpus instead), syncs it once with an agent, then restores the latest snapshot through
the server ``--passes`` times (``cvd restore --output`` as the admin, as ``bench.e2e``
step 4: the server hashes each blob). Per pass it prints wall time, the client's user and system CPU
(``wait4`` of that one process, plus its restore's worker processes and their fork server,
which this process reaps as a child subreaper) and the
server's (``/proc/PID/stat`` before and after). ``--profile client`` samples the client
with py-spy into WORK/restore-N.txt (collapsed stacks; its worker processes and their fork server too). Each pass after the first deletes the previous pass's files and waits ``--settle`` seconds
first (``bench.common.settle_deletions``: on ext4 without a journal, creating files right
after a mass deletion costs several times the system time). A/B: ``--other-src OTHER/src``
alternates the client between that tree (A, odd passes) and this checkout (B) against
this checkout's server (``--ab-server``: the server too, restarted with that pass's code),
each pass into a folder of its own (``--fresh``: nothing is deleted until the end, so no
pass pays for another's deletion; ``--freshfs``: into a new filesystem each,
``bench.freshfs``, as ``make bench``). ``--engine`` restores with ``lamina snapshot
restore`` from the server's data folder instead (the engine's restore of the same store:
no server CPU); ``--both``: each pass does the engine's restore, then the server's.
``--corpus DIR``: restore that tree (synced once) instead of building one.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import freshfs, method
from bench.common import ROOT, SETTLE_S, clean_env, rmtree, say, settle_deletions, tree_size
from bench.corpus import DEFAULT_GROUPS, build_corpus
from bench.e2e_lamina import LaminaE2E
from bench.e2e_prof import pyspy, top

DEFAULT_WORK = ROOT / "bench" / "work" / "e2e-restore"


def become_subreaper() -> None:
    """Orphans of this process's children (a restore's worker processes) come here, so
    their CPU is counted (``reap_orphans``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap_orphans(keep: set[int], wait_s: float = 10.0) -> list[tuple[float, float]]:
    """Wait for this process's children other than ``keep`` (orphans reparented here)
    and return each one's (user, system) CPU, its own reaped children's included."""
    out = []
    deadline = time.monotonic() + wait_s
    while True:
        me = os.getpid()
        kids = [
            int(d)
            for d in os.listdir("/proc")
            if d.isdigit() and int(d) not in keep and _ppid(int(d)) == me
        ]
        if not kids or time.monotonic() > deadline:
            return out
        for pid in kids:
            try:
                _, _, ru = os.wait4(pid, 0)
            except ChildProcessError:
                continue
            out.append((ru.ru_utime, ru.ru_stime))


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _proc_times(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def one_restore(
    lam: LaminaE2E,
    out: Path,
    n: int,
    profile: str,
    work: Path,
    settle: float,
    src: Path | None = None,
    engine: bool = False,
) -> dict[str, float]:
    """One restore into ``out``; ``src``: the client's code is that tree's (an A/B run);
    ``engine``: ``lamina snapshot restore`` of the server's store, not through the server."""
    if out.exists() and any(out.iterdir()):
        rmtree(out)
        settle_deletions(settle)
        say(f"(deleted the previous pass's files, then waited {settle:.0f} s)")
    assert lam.server.proc is not None
    su0, ss0 = _proc_times(lam.server.proc.pid)
    exe = os.fspath(Path(sys.executable).parent / "lamina")
    argv = [exe, "cvd", "restore", lam.cvd, "--output", os.fspath(out)]
    if engine:
        argv = [exe, "snapshot", "restore", "latest", "--data", os.fspath(lam.server.data)]
        argv += ["--output", os.fspath(out)]
    argv += ["--json", *method.exact_restore_flags()]
    if profile == "client" and pyspy():
        stacks = work / f"restore-{n}.txt"
        argv = [pyspy() or "py-spy", "record", "--format", "raw", "--rate", "50", "--threads",
                "--nonblocking", "--subprocesses", "--output", os.fspath(stacks), "--", *argv]  # fmt: skip
    elif profile == "perf":  # the kernel's side too: where the system time goes
        argv = ["perf", "record", "-q", "-g", "-o", os.fspath(work / f"perf-{n}.data"), *argv]
    os.sync()
    t0 = time.perf_counter()
    env = lam.admin.env if src is None else {**lam.admin.env, "PYTHONPATH": os.fspath(src)}
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    user, system = usage.ru_utime, usage.ru_stime
    # A restore's worker processes (and their fork server) outlive the client briefly and
    # come to this process (a child subreaper): their CPU is the client's too.
    for u, s in reap_orphans(keep={lam.server.proc.pid}):
        user += u
        system += s
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"restore failed: exit {p.returncode}")
    su1, ss1 = _proc_times(lam.server.proc.pid)
    row = {
        "wall_s": wall,
        "client_user_s": user,
        "client_sys_s": system,
        "server_user_s": su1 - su0,
        "server_sys_s": ss1 - ss0,
        "client_rss_mib": usage.ru_maxrss / 1024,
    }
    say(
        f"pass {n} {'B' if src is None else 'A'} {'engine' if engine else 'server'}: wall {wall:6.2f} s  client CPU user {user:6.2f} sys "
        f"{system:6.2f}  server CPU user {su1 - su0:6.2f} sys {ss1 - ss0:6.2f}  "
        f"client RSS {usage.ru_maxrss / 1024:.0f} MiB  load {os.getloadavg()[0]:.1f}",
        "bold",
    )
    if profile == "client" and (work / f"restore-{n}.txt").exists():
        for f, own, incl in sorted(top(work / f"restore-{n}.txt", 400), key=lambda r: -r[1])[:15]:
            print(f"    {incl * 100:5.1f}% {own * 100:5.1f}%  {f}")
    return row


def restart_server(lam: LaminaE2E, src: Path | None) -> None:
    """The server again on its data and port, its code ``src``'s (None: this checkout's)."""
    lam.server.stop()
    env = {k: v for k, v in lam.server.env.items() if k != "PYTHONPATH"}
    lam.server.env = env if src is None else {**env, "PYTHONPATH": os.fspath(src)}
    lam.server.start(timeout=300)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.e2e_restore", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument(
        "--small-files",
        type=int,
        default=0,
        help="restore make bench's small corpus of this many files (bench.method.build_small_files) "
        "instead of a /usr share",
    )
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--profile", choices=("client", "perf", "none"), default="none")
    ap.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help="seconds to wait after deleting the previous pass's files (0: none)",
    )
    ap.add_argument(
        "--alternate", action="store_true", help="wait (--settle) before every other pass only"
    )
    ap.add_argument("--profile-pass", type=int, default=0, help="profile only this pass")
    ap.add_argument("--other-src", type=Path, help="A/B: odd passes run this src tree's client")
    ap.add_argument(
        "--fresh", action="store_true", help="each pass into a new folder (none deleted)"
    )
    ap.add_argument(
        "--freshfs", action="store_true", help="each pass into a new filesystem (bench.freshfs)"
    )
    ap.add_argument("--engine", action="store_true", help="lamina snapshot restore instead")
    ap.add_argument("--both", action="store_true", help="each pass: the engine's, the server's")
    ap.add_argument(
        "--ab-server", action="store_true", help="with --other-src: the server's code too"
    )
    ap.add_argument("--corpus", type=Path, help="restore this tree (synced once) instead")
    args = ap.parse_args(argv)
    become_subreaper()
    work: Path = args.work.resolve()
    rmtree(work)
    work.mkdir(parents=True)
    corpus = work / "corpus"
    if args.corpus:
        corpus = args.corpus.resolve()
    elif args.small_files:
        corpus.mkdir()
        method.build_small_files(corpus, args.small_files, 1)  # make bench's --seed default
    else:
        build_corpus(corpus, DEFAULT_GROUPS, args.size_mb * 1024 * 1024)
    lam = LaminaE2E(work / "lamina", clean_env(), corpus)
    try:
        lam.setup(start_timeout=300)
        r, _, cpu = lam.cycle(sync=True)
        say(f"first sync {r.seconds:.1f} s, agent CPU {cpu['agent_cpu_s']:.1f} s", "bold")
        size = freshfs.size_for(tree_size(corpus))
        kinds = [True, False] if args.both else [args.engine]
        server_src: Path | None = None
        for n in range(1, args.passes + 1):
            settle = 0.0 if args.alternate and n % 2 == 0 else args.settle
            src = args.other_src.resolve() if args.other_src and n % 2 else None
            if args.ab_server and src != server_src:
                restart_server(lam, src)
                server_src = src
            profile = args.profile if args.profile_pass in (0, n) else "none"
            for engine in kinds:
                if args.freshfs:
                    with freshfs.fresh_target(work, f"p{n}-{int(engine)}", size) as (out, _):
                        one_restore(lam, out, n, profile, work, 0.0, src, engine)
                    continue
                out = work / (f"restored-{n}-{int(engine)}" if args.fresh else "restored")
                one_restore(lam, out, n, profile, work, settle, src, engine)
    finally:
        lam.server.stop()
        for out in work.glob("restored*"):
            rmtree(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
