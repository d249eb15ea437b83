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

import abc
import argparse
import dataclasses
import datetime as dt
import glob
import hashlib
import json
import os
import platform
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import method

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DEFAULT_WORK = BENCH / "work"
DEFAULT_RESULTS = BENCH / "results.json"
ALL_TOOLS = ("lamina", "restic", "borg")
PASSWORD = "bench-passphrase"  # restic and borg insist on one; the value is irrelevant

#: Default corpus: parts of /usr, each given a share of the size budget. A group
#: smaller than its share passes the rest on to the next one.
DEFAULT_GROUPS: list[tuple[str, float]] = [
    ("/usr/lib/python3*", 0.11),  # many small text files (.py)
    ("/usr/share/doc", 0.11),  # text, many already-gzipped files
    ("/usr/include", 0.11),  # C headers
    ("/usr/share/man", 0.08),  # tens of thousands of small .gz files
    ("/usr/bin", 0.22),  # executables, a few large ones
    ("/usr/lib/gcc", 0.09),  # a few 30+ MiB binaries
    ("/usr/lib/x86_64-linux-gnu", 0.28),  # shared libraries, hard links, 100 MiB files
]

# --------------------------------------------------------------------------- output


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
        CONSOLE.print(f"[{style}]{msg}[/{style}]" if style else msg, markup=bool(style))
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


# --------------------------------------------------------------------------- subprocesses


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
    #: its peak resident memory (the kernel's high-water mark, bytes)
    peak_rss: int | None = None


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


# --------------------------------------------------------------------------- file trees


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


# --------------------------------------------------------------------------- corpus


@dataclass
class Candidate:
    src: str
    rel: str  # path under the corpus root
    st: os.stat_result


@dataclass
class GroupReport:
    pattern: str
    share: int
    available_bytes: int
    files: int = 0
    bytes: int = 0
    symlinks: int = 0


def _list_group(roots: list[str], base: str) -> tuple[list[Candidate], list[Candidate]]:
    files: list[Candidate] = []
    links: list[Candidate] = []
    for top in roots:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames) + [
                d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
            ]:
                src = os.path.join(dirpath, name)
                try:
                    st = os.lstat(src)
                except OSError:
                    continue
                rel = os.path.relpath(src, base)
                if stat.S_ISLNK(st.st_mode):
                    links.append(Candidate(src, rel, st))
                elif stat.S_ISREG(st.st_mode) and os.access(src, os.R_OK):
                    files.append(Candidate(src, rel, st))
                # sockets, fifos, devices, unreadable files: skipped
    return files, links


def _select(files: list[Candidate], share: float) -> list[Candidate]:
    """About ``share`` bytes (apparent size) of ``files``, spread over the sorted listing.

    Error diffusion: each file earns credit in proportion to its size; a file is
    taken when the credit covers half of it and the share is not exceeded. A
    hard-linked file is taken with all its links in the listing, and pays for each.
    """
    links: dict[tuple[int, int], int] = {}
    for c in files:
        key = (c.st.st_dev, c.st.st_ino)
        links[key] = links.get(key, 0) + 1
    total = sum(c.st.st_size for c in files)
    if total <= share:
        return files
    ratio = share / total
    credit = 0.0
    spent = 0
    taken: list[Candidate] = []
    have: set[tuple[int, int]] = set()
    for c in files:
        key = (c.st.st_dev, c.st.st_ino)
        if key in have:
            taken.append(c)
            continue
        cost = c.st.st_size * links[key]
        credit += cost * ratio
        if cost == 0 or (credit >= cost / 2 and spent + cost <= share):
            taken.append(c)
            have.add(key)
            credit -= cost
            spent += cost
    return taken


def build_corpus(
    dest: Path, groups: list[tuple[str, float]], budget: float, base: str = "/"
) -> tuple[dict[str, Any], list[GroupReport]]:
    """Copy about ``budget`` bytes of the groups' files (with metadata) into ``dest``.

    Files keep their path relative to ``base`` (``usr/bin/...`` for the default).
    """
    dest.mkdir(parents=True)
    is_root = os.geteuid() == 0
    reports: list[GroupReport] = []
    leftover = 0.0
    made_dirs: dict[str, str] = {}  # dest dir -> source dir, to copy their metadata last
    linked: dict[tuple[int, int], str] = {}
    skipped = 0

    def ensure_dir(rel_dir: str, src_dir: str) -> None:
        if not rel_dir or rel_dir in made_dirs:
            return
        ensure_dir(os.path.dirname(rel_dir), os.path.dirname(src_dir))
        os.makedirs(dest / rel_dir, exist_ok=True)
        made_dirs[rel_dir] = src_dir

    for pattern, weight in groups:
        roots = sorted(glob.glob(pattern))
        share = max(0.0, weight * budget + leftover)
        files, links = _list_group(roots, base)
        avail = sum(c.st.st_size for c in files)
        rep = GroupReport(pattern, int(share) if budget != float("inf") else -1, avail)
        if not roots:
            warn(f"corpus: nothing matches {pattern}; its share goes to the next group")
        chosen = _select(files, share)
        for c in chosen:
            target = dest / c.rel
            ensure_dir(os.path.dirname(c.rel), os.path.dirname(c.src))
            key = (c.st.st_dev, c.st.st_ino)
            try:
                if c.st.st_nlink > 1 and key in linked:
                    os.link(linked[key], target)
                else:
                    shutil.copy2(c.src, target, follow_symlinks=False)
                    if is_root:
                        os.chown(target, c.st.st_uid, c.st.st_gid)
                        os.chmod(target, stat.S_IMODE(c.st.st_mode))  # chown clears setuid
                    linked[key] = os.fspath(target)
                rep.bytes += c.st.st_size
            except OSError as e:
                skipped += 1
                warn(f"corpus: skipped {c.src}: {e.strerror}")
                if target.exists() or target.is_symlink():
                    target.unlink()
                continue
            rep.files += 1
        for c in links:
            ensure_dir(os.path.dirname(c.rel), os.path.dirname(c.src))
            target = dest / c.rel
            try:
                os.symlink(os.readlink(c.src), target)
                if is_root:
                    os.chown(target, c.st.st_uid, c.st.st_gid, follow_symlinks=False)
                os.utime(target, ns=(c.st.st_atime_ns, c.st.st_mtime_ns), follow_symlinks=False)
            except OSError as e:
                skipped += 1
                warn(f"corpus: skipped symlink {c.src}: {e.strerror}")
                continue
            rep.symlinks += 1
        leftover = share - rep.bytes  # an overshoot is taken from the next group
        reports.append(rep)
    # Folders' metadata last, deepest first (their mtimes move while they are filled).
    for rel_dir in sorted(made_dirs, key=lambda r: r.count("/"), reverse=True):
        src_dir = made_dirs[rel_dir]
        try:
            shutil.copystat(src_dir, dest / rel_dir, follow_symlinks=False)
            if is_root:
                sst = os.lstat(src_dir)
                os.chown(dest / rel_dir, sst.st_uid, sst.st_gid)
        except OSError as e:
            warn(f"corpus: metadata of {src_dir}: {e.strerror}")
    return {"skipped": skipped}, reports


def copy_tree(src: Path, dst: Path) -> None:
    """``cp -a`` (hard links, owners, modes, times, xattrs)."""
    subprocess.run(["cp", "-a", "--", os.fspath(src), os.fspath(dst)], check=True)


# --------------------------------------------------------------------------- changes


def _writable(p: Path) -> None:
    mode = p.stat().st_mode
    if not mode & stat.S_IWUSR:  # e.g. a 0444 file when not running as root
        os.chmod(p, stat.S_IMODE(mode) | stat.S_IWUSR)


def _edit_in_place(p: Path, rng: random.Random) -> int:
    _writable(p)
    size = p.stat().st_size
    n = rng.randint(1, 4096)
    with open(p, "r+b") as f:
        off = rng.randrange(size) if size else 0
        f.seek(off)
        data = rng.randbytes(n)
        f.write(data)
    return n


def _append(p: Path, rng: random.Random) -> int:
    _writable(p)
    data = rng.randbytes(rng.randint(64, 8192))
    with open(p, "ab") as f:
        f.write(data)
    return len(data)


def _replace(p: Path, rng: random.Random) -> int:
    _writable(p)
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.write(rng.randbytes(size))
    return size


def mutate(root: Path, fraction: float, seed: int, *, replace_half: bool) -> dict[str, Any]:
    """Change about ``fraction`` of the (singly linked) files, deterministically.

    ``replace_half=False`` (the 1% step): half get bytes appended, half get a
    small region overwritten. ``replace_half=True`` (the second endpoint): half
    edited as above, half rewritten entirely (files up to 4 MiB; bigger ones are
    edited). Plus new files (a tenth as many) and deleted files (as many).
    """
    rng = random.Random(seed)
    files = regular_files(root)
    n = max(1, round(len(files) * fraction))
    chosen = rng.sample(files, min(n, len(files)))
    rest = sorted(set(files) - set(chosen))
    rep: dict[str, Any] = {
        "candidates": len(files),
        "modified": 0,
        "appended": 0,
        "edited": 0,
        "replaced": 0,
        "bytes_written": 0,
        "added": 0,
        "added_bytes": 0,
        "deleted": 0,
        "deleted_bytes": 0,
    }
    for i, p in enumerate(chosen):
        if replace_half and i % 2 == 1 and p.stat().st_size <= 4 * 1024 * 1024:
            rep["bytes_written"] += _replace(p, rng)
            rep["replaced"] += 1
        elif replace_half or i % 2 == 1:
            rep["bytes_written"] += _edit_in_place(p, rng)
            if replace_half:
                rep["bytes_written"] += _append(p, rng)
            rep["edited"] += 1
        else:
            rep["bytes_written"] += _append(p, rng)
            rep["appended"] += 1
        rep["modified"] += 1
    extra = max(1, n // 10)
    for p in rng.sample(rest, min(extra, len(rest))):
        rep["deleted_bytes"] += p.stat().st_size
        p.unlink()
        rep["deleted"] += 1
    dirs = sorted({p.parent for p in chosen})
    for i in range(extra):
        d = rng.choice(dirs)
        data = rng.randbytes(rng.randint(1024, 128 * 1024))
        (d / f"bench-new-{seed}-{i}.bin").write_bytes(data)
        rep["added"] += 1
        rep["added_bytes"] += len(data)
    return rep


# --------------------------------------------------------------------------- verification


@dataclass
class Manifest:
    entries: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # rel -> (type, ...)
    meta: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # mode uid gid mtime
    links: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # hard-link groups


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def manifest(root: Path) -> Manifest:
    m = Manifest()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                m.entries[rel] = ("dir",)
            elif stat.S_ISLNK(st.st_mode):
                m.entries[rel] = ("symlink", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                m.entries[rel] = ("file", st.st_size, _digest(p))
                if st.st_nlink > 1:
                    m.links.setdefault((st.st_dev, st.st_ino), []).append(rel)
            else:
                m.entries[rel] = ("other", stat.S_IFMT(st.st_mode))
            mode = stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(st.st_mode) else 0
            m.meta[rel] = (mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return m


@dataclass
class Verdict:
    content: list[str] = field(default_factory=list)  # missing, extra, different bytes or type
    metadata: list[str] = field(default_factory=list)  # mode, owner, mtime, hard links

    @property
    def ok(self) -> bool:
        return not self.content and not self.metadata

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "content_differences": len(self.content),
            "metadata_differences": len(self.metadata),
            "examples": (self.content + self.metadata)[:20],
        }


def compare(expected: Manifest, got: Manifest, *, owners: bool) -> Verdict:
    v = Verdict()
    for rel, want in expected.entries.items():
        have = got.entries.get(rel)
        if have is None:
            v.content.append(f"missing: {rel}")
        elif have != want:
            v.content.append(f"differs: {rel}: expected {want[:2]}, got {have[:2]}")
    for rel in got.entries.keys() - expected.entries.keys():
        v.content.append(f"extra: {rel}")
    for rel, (mode, uid, gid, mtime) in expected.meta.items():
        have_meta = got.meta.get(rel)
        if have_meta is None or rel not in got.entries:
            continue
        gmode, guid, ggid, gmtime = have_meta
        if mode != gmode:
            v.metadata.append(f"mode: {rel}: {oct(mode)} != {oct(gmode)}")
        if owners and (uid, gid) != (guid, ggid):
            v.metadata.append(f"owner: {rel}: {uid}:{gid} != {guid}:{ggid}")
        if mtime != gmtime:
            v.metadata.append(f"mtime: {rel}: {mtime} != {gmtime}")
    got_group = {rel: key for key, rels in got.links.items() for rel in rels}
    for rels in expected.links.values():
        keys = {got_group.get(r) for r in rels if r in got.entries}
        if len(keys) > 1 or None in keys:
            v.metadata.append(f"hard links not preserved: {', '.join(sorted(rels)[:3])} ...")
    return v


# --------------------------------------------------------------------------- tools


class Tool(abc.ABC):
    """One backup program under test; subclasses run its commands."""

    name = ""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self.repo = work / "repos" / self.name
        self.failed: str | None = None
        self.version = ""

    @abc.abstractmethod
    def available(self) -> str | None:
        """The tool's version, or None if it is not installed."""
        ...

    @abc.abstractmethod
    def init(self) -> Ran: ...

    @abc.abstractmethod
    def backup(self, src: Path, label: str, endpoint: str | None) -> tuple[Ran, dict[str, Any]]: ...

    @abc.abstractmethod
    def restore(self, label: str, out: Path, corpus: Path) -> tuple[Ran, Path]:
        """Restore the latest snapshot into ``out``; return the run and the corpus root in it."""
        ...

    @abc.abstractmethod
    def noop(self) -> Ran:
        """A command that opens the repository and lists snapshots (fixed cost per run)."""
        ...

    def cache_dirs(self) -> list[Path]:
        return []

    def repo_size(self) -> TreeSize:
        return tree_size(self.repo, skip=self.cache_dirs())

    def extra_stats(self) -> dict[str, Any]:
        return {}


class Lamina(Tool):
    name = "lamina"

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__(work, env)
        exe = Path(sys.executable).parent / "lamina"
        self.exe = os.fspath(exe) if exe.exists() else (shutil.which("lamina") or "lamina")

    def _cmd(self, *args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        return [self.exe, *args, "--data", self.repo]

    def available(self) -> str | None:
        if not (os.path.exists(self.exe) or shutil.which(self.exe)):
            return None
        r = run_cmd([self.exe, "version"], env=self.env, sync_first=False)
        ver = r.stdout.strip()
        try:
            rev = subprocess.run(
                ["git", "-C", os.fspath(ROOT), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            ver += f" (git {rev})"
        except (OSError, subprocess.CalledProcessError):
            pass
        return ver

    def init(self) -> Ran:
        return run_cmd(self._cmd("store", "init", "--json"), env=self.env)

    def backup(self, src: Path, label: str, endpoint: str | None) -> tuple[Ran, dict[str, Any]]:
        extra: list[str] = ["--source", f"{endpoint}:{src}"] if endpoint else []
        r = run_cmd(self._cmd("snapshot", "create", src, *extra, "--json"), env=self.env)
        summary: dict[str, Any] = json.loads(r.stdout)
        if summary.get("errors"):
            warn(f"lamina skipped {len(summary['errors'])} files: {summary['errors'][:5]}")
        return r, summary

    def restore(self, label: str, out: Path, corpus: Path) -> tuple[Ran, Path]:
        # restic and borg keep owners and setuid/setgid bits: so does Lamina with these flags
        r = run_cmd(
            self._cmd(
                "snapshot", "restore", "latest", "-o", out, "--json", *method.exact_restore_flags()
            ),
            env=self.env,
        )
        doc = json.loads(r.stdout)
        if doc.get("errors"):
            warn(f"lamina restore reported {len(doc['errors'])} errors: {doc['errors'][:5]}")
        return r, out

    def noop(self) -> Ran:
        return run_cmd(self._cmd("snapshot", "list", "--json"), env=self.env, sync_first=False)

    def cache_dirs(self) -> list[Path]:
        return [self.repo / "cache"]

    def extra_stats(self) -> dict[str, Any]:
        r = run_cmd(self._cmd("store", "stats", "--json"), env=self.env, sync_first=False)
        doc: dict[str, Any] = json.loads(r.stdout)
        parts = {}
        for child in sorted(self.repo.iterdir()):
            parts[child.name] = tree_size(child).disk if child.is_dir() else child.stat().st_size
        doc["parts_on_disk"] = parts
        return doc


class Restic(Tool):
    name = "restic"

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__(work, env)
        self.cache = work / "cache" / "restic"
        self.env = {
            **env,
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_REPOSITORY": os.fspath(self.repo),
            "RESTIC_CACHE_DIR": os.fspath(self.cache),
        }

    def available(self) -> str | None:
        if not shutil.which("restic"):
            return None
        return run_cmd(["restic", "version"], env=self.env, sync_first=False).stdout.strip()

    def init(self) -> Ran:
        return run_cmd(["restic", "init"], env=self.env)

    def backup(self, src: Path, label: str, endpoint: str | None) -> tuple[Ran, dict[str, Any]]:
        extra = ["--host", endpoint] if endpoint else []
        # exit 3: some source files could not be read (a warning; reported).
        r = run_cmd(["restic", "backup", "--json", *extra, src], env=self.env, warn_codes=(3,))
        summary: dict[str, Any] = {}
        for line in r.stdout.splitlines():
            if '"summary"' in line:
                summary = json.loads(line)
        return r, summary

    def restore(self, label: str, out: Path, corpus: Path) -> tuple[Ran, Path]:
        r = run_cmd(["restic", "restore", "latest", "--target", out], env=self.env)
        inner = out / corpus.resolve().relative_to("/")
        return r, inner if inner.is_dir() else out

    def noop(self) -> Ran:
        return run_cmd(["restic", "snapshots", "--json"], env=self.env, sync_first=False)

    def cache_dirs(self) -> list[Path]:
        return [self.cache]

    def extra_stats(self) -> dict[str, Any]:
        r = run_cmd(
            ["restic", "stats", "--json", "--mode", "raw-data"], env=self.env, sync_first=False
        )
        doc: dict[str, Any] = json.loads(r.stdout)
        doc["cache_on_disk"] = tree_size(self.cache).disk if self.cache.exists() else 0
        return doc


class Borg(Tool):
    name = "borg"

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__(work, env)
        self.base = work / "cache" / "borg"
        self.env = {
            **env,
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": os.fspath(self.base),  # cache, keys and security dirs
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def available(self) -> str | None:
        if not shutil.which("borg"):
            return None
        return run_cmd(["borg", "--version"], env=self.env, sync_first=False).stdout.strip()

    def init(self) -> Ran:
        return run_cmd(["borg", "init", "-e", "repokey", self.repo], env=self.env)

    def backup(self, src: Path, label: str, endpoint: str | None) -> tuple[Ran, dict[str, Any]]:
        # Run from inside the tree so archives hold relative paths ("usr/bin/...").
        # exit 1: warnings (e.g. a file changed while read); reported.
        r = run_cmd(
            ["borg", "create", "--json", f"{self.repo}::{label}", "."],
            env=self.env,
            cwd=src,
            warn_codes=(1,),
        )
        try:
            doc = json.loads(r.stdout)
            summary: dict[str, Any] = doc.get("archive", {}).get("stats", {})
        except json.JSONDecodeError:
            summary = {}
        return r, summary

    def restore(self, label: str, out: Path, corpus: Path) -> tuple[Ran, Path]:
        out.mkdir(parents=True, exist_ok=True)
        r = run_cmd(["borg", "extract", f"{self.repo}::{label}"], env=self.env, cwd=out)
        return r, out

    def noop(self) -> Ran:
        return run_cmd(["borg", "list", "--short", self.repo], env=self.env, sync_first=False)

    def cache_dirs(self) -> list[Path]:
        return [self.base]

    def extra_stats(self) -> dict[str, Any]:
        r = run_cmd(["borg", "info", "--json", self.repo], env=self.env, sync_first=False)
        doc: dict[str, Any] = json.loads(r.stdout).get("cache", {}).get("stats", {})
        doc["cache_on_disk"] = tree_size(self.base).disk if self.base.exists() else 0
        return doc


TOOL_CLASSES: dict[str, type[Tool]] = {"lamina": Lamina, "restic": Restic, "borg": Borg}

# --------------------------------------------------------------------------- the run

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
    corpora = args.corpora or ("usr" if args.corpus else "usr,small")
    args.corpora = [c.strip() for c in corpora.split(",") if c.strip()]
    if not args.corpora or any(c not in ("usr", "small") for c in args.corpora):
        ap.error(f"--corpora: choose from usr,small, not {corpora!r}")
    if args.runs < 1:
        ap.error("--runs: at least 1")
    if args.small_files is None:
        args.small_files = 10_000 if args.quick else 100_000
    if args.size_mb is None:
        args.size_mb = (
            (100.0 if args.quick else 1024.0) if args.corpus is None or args.quick else None
        )
    return args


def prepare_work(work: Path) -> None:
    work = work.resolve()
    if work == ROOT or ROOT.is_relative_to(work) or work == Path("/"):
        raise SystemExit(f"refusing to use {work} as the work folder")
    if work.exists():
        say(f"removing the previous run's {work}")
        rmtree(work)
    work.mkdir(parents=True)


def find_tools(
    names: Sequence[str], work: Path, env: dict[str, str]
) -> tuple[list[Tool], dict[str, str]]:
    """The tools that run here, and why the others are skipped (nothing is installed)."""
    tools: list[Tool] = []
    skipped: dict[str, str] = {}
    for name in names:
        t = TOOL_CLASSES[name](work, env)
        try:
            ver = t.available()
        except CommandFailed as e:
            ver = None
            say(str(e), "red")
        if ver is None:
            skipped[name] = f"{name} is not installed (or does not run); skipped"
            say(
                f"{name} NOT FOUND: skipping it (nothing is installed by this benchmark)",
                "bold yellow",
            )
            continue
        t.version = ver
        tools.append(t)
        say(f"{name}: {ver.splitlines()[0]}")
    return tools, skipped


@dataclasses.dataclass
class Corpus:
    path: Path
    size: TreeSize
    extra: dict[str, Any]
    groups: list[Any]


def make_corpus(args: argparse.Namespace, work: Path, kind: str = "usr") -> Corpus:
    """Copy the corpus the run backs up (a share of /usr, or --corpus; or generate the
    small-files one) and read it once."""
    corpus = work / "corpus"
    if kind == "small":
        say(f"generating {args.small_files} small files in {corpus}", "bold")
        t0 = time.perf_counter()
        extra = method.build_small_files(corpus, args.small_files, args.seed)
        size = tree_size(corpus)
        say(
            f"  {size.files} files, {size.dirs} folders, {human_bytes(size.apparent)} "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        warm_up(corpus)
        return Corpus(corpus, size, extra, [])
    groups = [(os.fspath(args.corpus.resolve()), 1.0)] if args.corpus else DEFAULT_GROUPS
    if args.corpus and not args.corpus.is_dir():
        raise SystemExit(f"--corpus {args.corpus}: not a folder")
    budget = args.size_mb * 1024 * 1024 if args.size_mb else float("inf")
    say(
        f"building the corpus in {corpus} "
        f"({'all of it' if budget == float('inf') else human_bytes(budget)} from "
        f"{', '.join(g for g, _ in groups)})",
        "bold",
    )
    t0 = time.perf_counter()
    base = os.fspath(args.corpus.resolve()) if args.corpus else "/"
    extra, group_reports = build_corpus(corpus, groups, budget, base)
    size = tree_size(corpus)
    say(
        f"  {size.files} files, {size.dirs} folders, {size.symlinks} symlinks, "
        f"{human_bytes(size.apparent)} ({human_bytes(size.disk)} on disk) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    warm = warm_up(corpus)
    say(f"  warm-up read: {warm:.1f} s")
    return Corpus(corpus, size, extra, list(group_reports))


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

    def restore(t: Tool) -> None:
        out = work / "restore" / t.name
        out.mkdir(parents=True)
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
        rmtree(out)

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
            "filesystem_note": "corpus, repositories and restores on the same filesystem",
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


def output_for(args: argparse.Namespace, kind: str) -> Path:
    """bench/results.json for the usr corpus, bench/results-small.json for the other."""
    out: Path = args.output
    return out if kind == "usr" else out.with_name(f"{out.stem}-{kind}{out.suffix}")


def bench_corpus(args: argparse.Namespace, kind: str) -> int:
    """``--runs`` passes over one corpus, the tools' order rotated; medians printed and kept."""
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
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
    summary = method.summarize([p["figures"] for p in passes])
    figures = method.medians(summary)
    total = time.perf_counter() - t_start
    assert c_size is not None
    print_table(names, summary, c_size, args.quick, kind, args.runs)
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
    out = output_for(args, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
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
    quick: bool,
    kind: str,
    runs: int,
) -> None:
    rat = ratios(method.medians(summary))
    peers = [p for p in ("restic", "borg") if p in names and "lamina" in names]
    title = (
        f"Corpus {kind}: {c_size.files} files, {human_bytes(c_size.apparent)}"
        f"{' (quick)' if quick else ''}. Median of {runs} passes (min-max), the tools' order "
        "rotated. Ratios (of medians) < 1: Lamina faster / smaller."
    )
    rows = []
    for key, label, unit in FIGURES:
        vals = summary.get(key, {})
        row = [label] + [method.spread(vals.get(n), unit, human_bytes) for n in names]
        for p in peers:
            r = rat.get(key, {}).get(f"lamina/{p}")
            row.append("—" if r is None else f"{r:.2f}")
        rows.append(row)
    header = ["figure", *names, *[f"lamina/{p}" for p in peers]]
    print_rows(title, header, rows)


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
