"""Hardware migration: a CVD laid onto a replacement that already holds the same OS.

``python -m bench.migrate [--quick] [--size-mb N]`` from the project root (part of
``make bench``). In-process, without a server: the agent's own staging, apply and
stream code reads blobs straight from a local store through a counting source.

Downloaded bytes count file contents and folder listings (``tree_bytes_read`` says
how much of them were listings): the staging reads each listing once (a cache in its
staging area), and the stream reads only the folders that can hold user data.
Times are CPU seconds (user + system, ``getrusage``) as well as wall seconds: the
machine this runs on may be busy, and CPU time is what a busy machine spoils least.

1. The old machine: bench.run's corpus (parts of /usr, ``--size-mb``, default 1024) as
   its OS, its own identity and fstab, and user data (5% of the budget, random bytes).
2. It is backed up (untimed) into a Lamina store and, for the comparison, a restic
   repository.
3. The replacement: the same OS with ~1% of its files changed (bench.run's change
   helper: another patch level), its own identity, fstab and no user data.
4. Lamina migrates (full mode): stage the boot set, apply it, confirm, stream the
   user data. Reported: bytes read from the store against bytes of files that differ.
5. restic restores the same snapshot into an empty folder: the time to compare with
   (its CPU time counted from ``RUSAGE_CHILDREN`` around the process).

Everything lives under bench/work/migrate/ (git-ignored), wiped at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import time
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from bench.common import BENCH, clean_env, human_bytes, prepare_work, rmtree, say
from bench.corpus import DEFAULT_GROUPS, build_corpus, copy_tree, mutate
from bench.tools import Restic
from lamina.agent import staging
from lamina.agent.stream import stream_user_data
from lamina.db.stores import StoreLocation, init_store
from lamina.layers.rules import builtin
from lamina.protocol.schemas import PolicySettings
from lamina.store.repository import Store
from lamina.tree.backup import backup
from lamina.tree.paths import walk

DEFAULT_WORK = BENCH / "work" / "migrate"
DEFAULT_RESULTS = BENCH / "results-migrate.json"


class Counting:
    """A ``BlobSource`` over the store that counts what a remote agent would download."""

    def __init__(self, store: Store, trees: set[bytes]) -> None:
        self.store = store
        self.trees = trees
        self.bytes = 0  # file contents
        self.tree_bytes = 0  # folder listings

    def get(self, bid: bytes) -> bytes:
        data = self.store.get(bid)
        if bid in self.trees:
            self.tree_bytes += len(data)
        else:
            self.bytes += len(data)
        return data

    def get_many(self, ids: Iterable[bytes]) -> Iterator[bytes]:
        for i in ids:
            yield self.get(i)

    def prefetch(self, ids: Collection[bytes]) -> None:
        return None


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def identity(root: Path, host: str, uuid: str) -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "etc/hostname").write_text(host + "\n")
    (root / "etc/machine-id").write_text(f"{host:0>32}\n")
    (root / "etc/fstab").write_text(f"UUID={uuid} / ext4 defaults 0 1\n")


def user_data(root: Path, budget: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    home = root / "home/ann"
    home.mkdir(parents=True)
    made = 0
    i = 0
    while made < budget:
        size = rng.randint(1, 512) * 1024
        (home / f"file{i:05}.bin").write_bytes(rng.randbytes(size))
        made += size
        i += 1
    return made


def differing_bytes(old: Path, new: Path) -> int:
    """Bytes of the old machine's files that the replacement lacks or holds otherwise."""
    total = 0
    for dirpath, _dirs, names in os.walk(old):
        for n in names:
            p = Path(dirpath) / n
            if p.is_symlink() or not p.is_file():
                continue
            q = new / p.relative_to(old)
            try:
                same = q.is_file() and q.stat().st_size == p.stat().st_size
                same = same and q.read_bytes() == p.read_bytes()
            except OSError:
                same = False
            if not same:
                total += p.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=None)
    ap.add_argument("--quick", action="store_true", help="a 100 MiB corpus")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    args = ap.parse_args(argv)
    size_mb = args.size_mb or (100.0 if args.quick else 1024.0)
    work: Path = args.work
    prepare_work(work)
    old = work / "old"
    say(f"building the old machine: {size_mb:.0f} MiB of /usr, its identity and user data")
    build_corpus(old, DEFAULT_GROUPS, size_mb * 0.95 * 1024 * 1024)
    identity(old, "desk-01", "1111-aaaa")
    user_data(old, int(size_mb * 0.05 * 1024 * 1024))
    new = work / "new"
    copy_tree(old, new)
    rmtree(new / "home")  # the replacement has no user data yet
    (new / "home").mkdir()
    mutate(new / "usr", 0.01, seed=42, replace_half=False)
    identity(new, "fresh", "2222-bbbb")
    differ = differing_bytes(old, new)

    store = init_store(StoreLocation(data=work / "store"))
    tree = backup(store, old).snapshot.root
    restic = Restic(work, clean_env())
    restic_ok = restic.available() is not None
    if restic_ok:
        restic.init()
        restic.backup(old, "old", None)

    rules = builtin("debian")
    trees = {tree} | {e.subtree for _, e in walk(store.get, tree) if e.subtree is not None}
    src = Counting(store, trees)
    state = work / "new-state"
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    scope = staging.migration_scope(rules, "full", (), PolicySettings(), new, state)
    tx, plan = staging.stage_tree(
        src, tree, new, state, scope, store.keys.chunking, {"kind": "migration"}
    )
    staged = time.perf_counter()
    staging.boot(state, new)
    staging.confirm(state, new)
    applied = time.perf_counter()
    prog = stream_user_data(src, tree, new, rules, store.keys.chunking)
    lamina_s = time.perf_counter() - t0
    lamina_cpu = cpu_seconds() - cpu0
    assert (new / "etc/hostname").read_text() == "desk-01\n"
    assert (new / "etc/fstab").read_text().startswith("UUID=2222-bbbb")

    restic_s = restic_cpu = None
    if restic_ok:
        t1, cpu1 = time.perf_counter(), cpu_seconds()
        restic.restore("old", work / "restic-out", old)
        restic_s, restic_cpu = time.perf_counter() - t1, cpu_seconds() - cpu1
    downloaded = src.bytes + src.tree_bytes
    res = {
        "size_mb": size_mb,
        "bytes_differing": differ,
        "bytes_downloaded": downloaded,
        "content_bytes_read": src.bytes,
        "tree_bytes_read": src.tree_bytes,
        "download_over_differing": round(downloaded / differ, 3) if differ else None,
        "operations": len(tx.journal["ops"]),
        "stage_s": round(staged - t0, 2),
        "apply_s": round(applied - staged, 2),
        "stream_s": round(lamina_s - (applied - t0), 2),
        "lamina_s": round(lamina_s, 2),
        "restic_restore_s": round(restic_s, 2) if restic_s is not None else None,
        "lamina_over_restic": round(lamina_s / restic_s, 3) if restic_s else None,
        "lamina_cpu_s": round(lamina_cpu, 2),
        "restic_restore_cpu_s": round(restic_cpu, 2) if restic_cpu is not None else None,
        "lamina_over_restic_cpu": round(lamina_cpu / restic_cpu, 3) if restic_cpu else None,
        "load_average": round(os.getloadavg()[0], 1),
        "streamed_files": prog.files_total,
        "space_needed": plan.space_needed,
    }
    say(
        f"downloaded {human_bytes(downloaded)} ({human_bytes(src.tree_bytes)} of folder "
        f"listings) for {human_bytes(differ)} that differ (ratio {res['download_over_differing']}); "
        f"lamina {lamina_s:.1f} s wall, {lamina_cpu:.1f} s CPU "
        f"(stage {res['stage_s']}, apply {res['apply_s']}, stream {res['stream_s']} wall); "
        f"restic restore {res['restic_restore_s']} s wall, {res['restic_restore_cpu_s']} s CPU "
        f"(CPU ratio {res['lamina_over_restic_cpu']})"
    )
    args.results.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
