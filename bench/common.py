"""What every bench module shares: output, running commands, sizes of trees, the work folder."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DEFAULT_WORK = BENCH / "work"
PASSWORD = "bench-passphrase"  # restic and borg insist on one; the value is irrelevant


def _console() -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    # Not a terminal (make bench | tee, CI): wide enough that the table does not wrap.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 150)


CONSOLE = _console()


def say(msg: str, style: str = "") -> None:
    if CONSOLE is not None:
        # the message is text (a tool's error may hold "[/path]"), only the style is markup
        from rich.markup import escape

        CONSOLE.print(f"[{style}]{escape(msg)}[/{style}]" if style else msg, markup=bool(style))
    else:
        print(msg, flush=True)


def warn(msg: str) -> None:
    say(f"WARNING: {msg}", "yellow")


def human_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.2f} {unit}"
        n /= 1024
    return f"{sign}{n} B"


class CommandFailed(Exception):
    pass


@dataclass
class Ran:
    seconds: float
    stdout: str
    stderr: str
    returncode: int
    load: float = 0.0  # 1-minute load average just before (other work on the machine skews times)
    #: user + system CPU seconds of the process and its children (bench.e2e's agent)
    cpu_s: float | None = None
    #: its peak resident memory (bytes): the kernel's high-water mark since its ``exec``
    #: (``bench.e2e_procs.TreeRss``: not ``ru_maxrss``, which counts the bench's own pages)
    peak_rss: int | None = None
    #: the peak of its and its descendants' resident memory added up (an agent's worker
    #: processes with it), sampled every ``TreeRss.PERIOD`` seconds (bytes)
    tree_peak_rss: int | None = None


def run_cmd(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    warn_codes: Iterable[int] = (),
    sync_first: bool = True,
) -> Ran:
    """Run ``cmd`` and time it; raise CommandFailed (with its stderr) unless it exits 0.

    ``sync_first`` flushes dirty pages of earlier steps first (untimed), so one tool's
    write-back does not land in the next tool's figure.
    """
    argv = [os.fspath(c) for c in cmd]
    if sync_first:
        os.sync()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, errors="replace")
    except OSError as e:
        raise CommandFailed(f"cannot run {argv[0]}: {e}") from e
    seconds = time.perf_counter() - t0
    if p.returncode != 0 and p.returncode not in set(warn_codes):
        tail = "\n".join(p.stderr.strip().splitlines()[-40:]) or "(no stderr)"
        raise CommandFailed(
            f"command failed (exit {p.returncode}, {seconds:.1f}s): {' '.join(argv)}\n"
            f"--- stderr (last 40 lines) ---\n{tail}"
        )
    if p.returncode != 0:
        warn(f"{' '.join(argv)} exited {p.returncode} (a warning):\n{p.stderr.strip()[-3000:]}")
    return Ran(seconds, p.stdout, p.stderr, p.returncode, load)


def clean_env() -> dict[str, str]:
    """The environment for the tools: ours, minus settings that would redirect them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RESTIC_", "BORG_"))
        and k not in ("LAMINA_DATA", "LAMINA_DB", "LAMINA_STORE", "LAMINA_KEYFILE")
        and k != "LAMINA_STORE_PASSPHRASE"
    }
    env["LC_ALL"] = "C.UTF-8"
    return env


#: Seconds after which ext4 no longer treats a freed inode as recently deleted (60 s once
#: its inode table block is written back: ``os.sync()``), plus a margin.
SETTLE_S = 65.0


def settle_deletions(seconds: float = SETTLE_S) -> None:
    """Write back and wait until the inodes just freed are no longer "recently deleted".

    On ext4 without a journal (the bench host's root), allocating an inode skips every
    inode of the group freed in the last 60 s (360 s while its inode table block is dirty),
    each skip a buffer-cache look-up (``recently_deleted`` in fs/ext4/ialloc.c): a restore
    that creates 40,000 files right after 40,000 were deleted spends several times the
    system time of one that does not (``perf record -g`` of such restores: 42 to 48% of
    their samples in ``recently_deleted``). A step that creates many files and is timed waits this out."""
    os.sync()
    if seconds > 0:
        time.sleep(seconds)


def rmtree(path: Path) -> None:
    """Remove a tree even if it holds read-only folders (a copied /usr does)."""

    def onerror(func: Callable[..., Any], p: str, _exc: Any) -> None:
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)


def built_once(path: Path, make: Callable[[Path], object]) -> float:
    """``make(path)`` unless an earlier run finished it (``PATH.complete`` beside it), so a
    large input is built once and reused; seconds spent (0 when it was there)."""
    marker = path.with_name(path.name + ".complete")
    if marker.exists():
        return 0.0
    t0 = time.perf_counter()
    rmtree(path)
    make(path)
    marker.write_text("complete\n")
    return time.perf_counter() - t0


@dataclass
class TreeSize:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    apparent: int = 0  # sum of file sizes
    disk: int = 0  # allocated blocks, hard links counted once (what `du` says)


def tree_size(root: Path, skip: Sequence[Path] = ()) -> TreeSize:
    out = TreeSize()
    seen: set[tuple[int, int]] = set()
    skipped = {os.fspath(s) for s in skip}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
        st = os.lstat(dirpath)
        out.dirs += 1
        out.disk += st.st_blocks * 512
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                if os.path.islink(p):
                    out.symlinks += 1
                continue
            if stat.S_ISLNK(st.st_mode):
                out.symlinks += 1
            elif stat.S_ISREG(st.st_mode):
                out.files += 1
                out.apparent += st.st_size
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            out.disk += st.st_blocks * 512
    return out


def warm_up(root: Path) -> float:
    """Read every file once (untimed for the tools) so all start from a warm page cache."""
    t0 = time.perf_counter()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            try:
                with open(p, "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass
            except OSError:
                pass
    return time.perf_counter() - t0


def warm_inputs(details: dict[str, Any], tool: str, step: str, paths: Iterable[Path]) -> None:
    """Read ``paths`` (those that exist) just before ``tool``'s timed ``step`` and record
    the seconds under ``details[tool]["warm_up_s"][step]``: the bench host pages out
    memory idle for a minute (``bench.host.page_out_schemes``)."""
    seconds = sum(warm_up(p) for p in paths if p.exists())
    details.setdefault(tool, {}).setdefault("warm_up_s", {})[step] = seconds


def regular_files(root: Path, *, single_link: bool = True) -> list[Path]:
    out = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and (st.st_nlink == 1 or not single_link):
                out.append(p)
    return out


def prepare_work(work: Path) -> None:
    work = work.resolve()
    if work == ROOT or ROOT.is_relative_to(work) or work == Path("/"):
        raise SystemExit(f"refusing to use {work} as the work folder")
    if work.exists():
        say(f"removing the previous run's {work}")
        rmtree(work)
    work.mkdir(parents=True)
