"""The benchmark corpus: parts of /usr within a size budget, and the deterministic changes made to it."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import random
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import method
from bench.common import TreeSize, human_bytes, regular_files, say, tree_size, warm_up, warn

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
