"""The server's peak memory and CPU committing a snapshot of many files (the commit walk).

``python -m bench.commit_rss --files 1000000`` builds once (under
``bench/work/commit-rss-N``, reused while ``commit-rss-N.complete`` is beside it) a
server's store and database holding an active device's CVD and, uploaded and owned by
it, the trees and chunks of a snapshot of N files shaped as ``bench.agent_rss``'s tree
(1,000 files per folder, 100 folders per folder: at 1,000,000 files one level of 1,000
folders holds every file), half empty and half a few distinct bytes; built with the
tree codec, not a file system. Each run copies that state and commits the snapshot in a
new process (``sync.commit_snapshot``, the ``/agent/commit`` service), which prints its
peak RSS (``ru_maxrss``), its RSS before the commit and its CPU (user + system).

A/B: ``--src OTHER/src`` runs the commit with another checkout's ``lamina`` (repeatable;
``--src .`` is this one); the runs alternate A, B, A, B for ``--rounds``.
Nothing is installed and nothing outside ``bench/work`` is written.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from bench.common import DEFAULT_WORK, ROOT, built_once, rmtree, say
from lamina.db.stores import StoreLocation, init_store, open_database, open_store
from lamina.protocol.schemas import (
    CentralizeRequest,
    CommitRequest,
    EnrollRequest,
    HardwareFacts,
    PolicyCreate,
    PolicySettings,
    TokenCreate,
)
from lamina.server.security import ROLES, Principal
from lamina.server.services import access, fleet, policies, sync
from lamina.store.blob import BlobKind
from lamina.store.repository import Store
from lamina.store.writer import Writer
from lamina.tree.backup import walk_blobs
from lamina.tree.model import Entry, decode_tree, encode_tree

PER_FOLDER = 1000
FOLDERS_PER_FOLDER = 100


def _file(i: int) -> tuple[bytes, bytes | None]:
    """File i's name and content (None: empty), as ``bench.agent_rss`` makes them."""
    return b"f%07d" % i, (b"file %d\n" % i) if i % 2 else None


def _snapshot(w: Writer, files: int, changed: set[int]) -> tuple[bytes, list[bytes], int]:
    """Write the snapshot's blobs (files in ``changed`` hold other bytes); its root, the
    ids of its blobs and its size."""
    ids: list[bytes] = []
    size = 0
    groups: dict[int, list[Entry]] = {}
    for lo in range(0, files, PER_FOLDER):
        entries = []
        for i in range(lo, min(files, lo + PER_FOLDER)):
            name, data = _file(i)
            if i in changed:
                data = b"changed %d\n" % i
            content: list[bytes | int] = []
            if data is not None:
                chunk = w.put(BlobKind.DATA, data)
                content, size = [chunk], size + len(data)
                ids.append(chunk)
            entries.append(Entry(name=name, type="file", size=len(data or b""), content=content))
        sub = w.put(BlobKind.TREE, encode_tree(entries))
        ids.append(sub)
        n = lo // PER_FOLDER
        folder = Entry(name=b"d%03d" % (n % FOLDERS_PER_FOLDER), type="dir", subtree=sub)
        groups.setdefault(n // FOLDERS_PER_FOLDER, []).append(folder)
    top = []
    for g, folders in groups.items():
        tid = w.put(BlobKind.TREE, encode_tree(folders))
        ids.append(tid)
        top.append(Entry(name=b"d%03d" % g, type="dir", subtree=tid))
    root = w.put(BlobKind.TREE, encode_tree(top))
    ids.append(root)
    return root, ids, size


def build(state: Path, files: int) -> float:
    """The server's state with the snapshot uploaded and owned; seconds spent (0: there)."""
    return built_once(state, lambda s: _make_state(s, files))


def _make_state(state: Path, files: int) -> None:
    loc = StoreLocation(data=state)
    store = init_store(loc)
    engine = open_database(loc)
    admin = Principal("user", "u-admin", "admin", "administrator", ROLES["administrator"])
    policies.create(engine, admin, PolicyCreate(name="p", settings=PolicySettings()))
    token = fleet.create_token(engine, admin, TokenCreate(uses=1)).token
    facts = HardwareFacts(machine_id="m-big", hostname="big")
    device = fleet.enroll(engine, EnrollRequest(token=token, facts=facts), store.keys.chunking)
    cvd = fleet.centralize(engine, admin, "big", CentralizeRequest(policy="p"))
    with store.writer() as w:
        root, ids, size = _snapshot(w, files, set())
    for k in range(0, len(ids), 100_000):
        access.record(engine, cvd.id, ids[k : k + 100_000])
    (state / "commit.json").write_text(
        json.dumps({"device": device.device_id, "root": root.hex(), "files": files, "bytes": size})
    )
    store.close()
    engine.dispose()


def _opened(state: Path) -> tuple[dict[str, Any], Store, Engine, Principal, CommitRequest]:
    """The state's commit (``commit.json``), store, database, device and commit request."""
    doc = json.loads((state / "commit.json").read_text())
    loc = StoreLocation(data=state)
    device = Principal("device", doc["device"], "device big", role="active")
    req = CommitRequest(root=doc["root"], files=doc["files"], bytes=doc["bytes"])
    return doc, open_store(loc), open_database(loc), device, req


def build_changed(base: Path, state: Path, files: int, fraction: float) -> float:
    """``base`` with its snapshot committed, then a snapshot where ``fraction`` of the
    files (at random, seed 1) hold other bytes uploaded and owned: the commit of a ~1%
    change. Seconds spent (0: there)."""
    return built_once(state, lambda s: _make_changed(base, s, files, fraction))


def _make_changed(base: Path, state: Path, files: int, fraction: float) -> None:
    subprocess.run(["cp", "-a", "--", os.fspath(base), os.fspath(state)], check=True)
    doc, store, engine, device, first = _opened(state)
    sync.commit_snapshot(engine, store, device, first)
    changed = set(random.Random(1).sample(range(files), int(files * fraction)))
    with store.writer() as w:
        root, ids, size = _snapshot(w, files, changed)
    cvd = fleet.active_cvd_of_device(engine, device)
    for k in range(0, len(ids), 100_000):
        access.record(engine, cvd.id, ids[k : k + 100_000])
    doc.update(root=root.hex(), bytes=size, previous=doc["root"])
    (state / "commit.json").write_text(json.dumps(doc))
    store.close()
    engine.dispose()


def _decoded_at_intake(store: Store, root: bytes, previous: bytes) -> sync.DecodedTrees:
    """The new trees (not in the previous snapshot) decoded, as the server's intake keeps
    them for the commit (``sync.DecodedTrees``)."""
    old = set(walk_blobs(store, previous))
    trees = sync.DecodedTrees()
    new = [i for i in walk_blobs(store, root) if i not in old]
    for tid in store.catalog.locate(new, kind=BlobKind.TREE):
        trees.put(tid, decode_tree(store.get(tid)))
    return trees


def child(state: Path) -> None:
    """Commit the snapshot of ``state`` (a copy: it is changed) and print the figures."""
    doc, store, engine, device, req = _opened(state)
    trees = None
    if "previous" in doc:
        trees = _decoded_at_intake(
            store, bytes.fromhex(doc["root"]), bytes.fromhex(doc["previous"])
        )
    before = resource.getrusage(resource.RUSAGE_SELF)
    sync.commit_snapshot(engine, store, device, req, trees=trees)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(
        json.dumps(
            {
                "rss_before_mib": round(before.ru_maxrss / 1024, 1),
                "peak_rss_mib": round(after.ru_maxrss / 1024, 1),
                "commit_cpu_s": round(cpu, 2),
            }
        )
    )


def run(state: Path, work: Path, src: Path) -> dict[str, Any]:
    copy = work / "commit-rss-run"
    rmtree(copy)
    subprocess.run(["cp", "-a", "--", os.fspath(state), os.fspath(copy)], check=True)
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.commit_rss", "--child", os.fspath(copy)],
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        rmtree(copy)
    if done.returncode:
        raise SystemExit(f"the commit with {src} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def alternate(
    state: Path, work: Path, srcs: list[Path], rounds: int, files: int
) -> list[dict[str, Any]]:
    """Commit ``state``'s snapshot with each of ``srcs`` in turn, ``rounds`` times."""
    results = []
    for r in range(rounds):
        for src in srcs:
            fig = run(state, work, src)
            results.append({"src": os.fspath(src), "round": r, "files": files, **fig})
            say(
                f"{files:>9} files  {src}  peak RSS {fig['peak_rss_mib']:7.1f} MiB "
                f"(before the commit {fig['rss_before_mib']:.1f})  commit CPU {fig['commit_cpu_s']:.2f} s"
            )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.commit_rss", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--src", type=Path, action="append", help="a checkout's src (repeatable)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--changed",
        type=float,
        help="commit a snapshot where this fraction of the files changed, over the first",
    )
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    state = work / f"commit-rss-{args.files}"
    built = build(state, args.files)
    if built:
        say(f"built a snapshot of {args.files} files in {state} in {built:.1f} s")
    if args.changed:
        base, state = state, work / f"commit-rss-{args.files}-changed-{args.changed}"
        built = build_changed(base, state, args.files, args.changed)
        if built:
            say(f"committed it and built a {args.changed:.0%} change in {built:.1f} s")
    srcs = [s.resolve() for s in args.src or [ROOT / "src"]]
    results = alternate(state, work, srcs, args.rounds, args.files)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
