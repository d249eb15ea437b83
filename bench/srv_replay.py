"""The server's CPU for one first sync, without HTTP: its service calls captured once, then
replayed in one process on a copy of the server's state, CPU per part.

``python -m bench.srv_replay capture --corpus DIR --work W`` runs a server (its sync
services wrapped through a ``sitecustomize`` on ``PYTHONPATH``) and an agent's first sync
of a copy of DIR, and keeps the server's database and store as they were before it
(W/before) and every call (W/calls.pkl). ``python -m bench.srv_replay replay --work W``
replays the calls in order on a fresh copy of W/before and prints the CPU of the process
(``getrusage``: every thread, the pack upload's too) and of each part (``thread_time``).
A/B: run ``replay`` with another checkout's ``src`` on ``PYTHONPATH``, alternating.
``replay --statements`` also prints every SQL statement's CPU (``thread_time``), summed by
its text (lists of marks folded), with how many times it ran, the rows it was given, and
the transactions committed, read and write.

``python -m bench.srv_replay requests --work W [--n N]`` measures what the replay leaves
out, the cost of a request itself: a server and an enrolled agent (one file), then N
``/agent/missing`` asks of no id with the agent's credential, back to back on one
connection; it prints the server's CPU per request (``/proc/PID/stat``: HTTP, the
middlewares, authentication, the route's worker-thread hops, the device's CVD).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import os
import pickle
import re
import resource
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import clean_env, rmtree
from bench.corpus import copy_tree
from bench.e2e_lamina import LaminaE2E

#: Wraps the server's sync services when SRVCPU_CAPTURE names a file (server process only).
SITECUSTOMIZE = """
import os
_path = os.environ.get("SRVCPU_CAPTURE")
if _path and b"server" in open("/proc/self/cmdline", "rb").read().split(b"\\0")[2:4]:
    import pickle, threading
    from lamina.server.services import access, sync
    try:
        from lamina.server.services import intake
    except ImportError:  # a checkout before session 23: the intake was sync's
        intake = sync
    _out, _lock, _local = open(_path, "ab"), threading.Lock(), threading.local()

    def _dump(rec):
        with _lock:
            pickle.dump(rec, _out)
            _out.flush()

    _missing, _upload = sync.device_missing, intake.upload_blobs
    _record, _commit = access.record, sync.commit_snapshot

    def device_missing(engine, store, device, hex_ids, *a, **k):
        _dump(("missing", device, list(hex_ids)))
        return _missing(engine, store, device, hex_ids, *a, **k)

    def upload_blobs(store, items, *a, **k):
        _dump(("bundle", list(items)))
        return _upload(store, items, *a, **k)

    def record(engine, cvd_id, ids, *a, **k):
        ids = list(ids)
        if not getattr(_local, "commit", False):  # (the commit's own: replayed with it)
            _dump(("record", cvd_id, ids))
        return _record(engine, cvd_id, ids, *a, **k)

    def commit_snapshot(engine, store, device, req, *a, **k):
        _dump(("commit", device, req))
        _local.commit = True
        try:
            return _commit(engine, store, device, req, *a, **k)
        finally:
            _local.commit = False

    sync.device_missing, intake.upload_blobs = device_missing, upload_blobs
    access.record, sync.commit_snapshot = record, commit_snapshot
"""


def capture(corpus_src: Path, work: Path) -> None:
    rmtree(work)
    (work / "site").mkdir(parents=True)
    (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    corpus = work / "corpus"
    copy_tree(corpus_src, corpus)
    calls = work / "calls.pkl"
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [os.fspath(work / "site"), env.get("PYTHONPATH")])
    )
    env["SRVCPU_CAPTURE"] = os.fspath(calls)
    lam = LaminaE2E(work / "lamina", env, corpus)
    try:
        lam.setup(start_timeout=300)
        server, before = work / "lamina" / "server", work / "before"
        before.mkdir()
        src, dst = sqlite3.connect(server / "lamina.db"), sqlite3.connect(before / "lamina.db")
        src.backup(dst)
        dst.close()
        src.close()
        shutil.copy(server / "keys.json", before / "keys.json")
        shutil.copytree(server / "store", before / "store")
        os.truncate(calls, 0)  # the server appends: what came before the sync goes
        _, _, cpu = lam.cycle(sync=False)
        print(f"captured; the sync cost the server {cpu['server_cpu_s']:.2f} s of CPU")
    finally:
        lam.server.stop()


def _records(path: Path) -> Iterator[tuple[Any, ...]]:
    """The captured calls, in order."""
    with open(path, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


class StatementCpu:
    """Every SQL statement's CPU (the calling thread's ``thread_time``), summed by its
    text: SQLAlchemy's cursor events, and a wrapper of ``driver_rows`` (statements run
    on the driver's cursor, which the events do not see) in the modules that import it."""

    #: The modules whose ``driver_rows`` is wrapped.
    MODULES = (
        "lamina.db.catalog",
        "lamina.server.services.access",
        "lamina.server.services.inflight",
    )

    def __init__(self) -> None:
        #: text -> [runs, CPU seconds, rows given (an executemany's each count)]
        self.stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0])
        self.commits = {"write": 0, "read": 0}

    @staticmethod
    def text(sql: str) -> str:
        """``sql`` with its lists of marks folded (one text for every batch size)."""
        sql = re.sub(r"\(\?\)(?:\s*,\s*\(\?\))+", "(?)...", sql)
        return " ".join(re.sub(r"\?(?:\s*,\s*\?)+", "?...", sql).split())[:160]

    def add(self, sql: str, seconds: float, rows: int) -> None:
        s = self.stats[self.text(sql)]
        s[0] += 1
        s[1] += seconds
        s[2] += rows

    @contextlib.contextmanager
    def installed(self) -> Iterator[StatementCpu]:
        """Count while in the block (every engine's statements, in every thread)."""
        import importlib

        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        def before(conn: Any, *_: Any) -> None:
            conn.info.setdefault("statement_t0", []).append(time.thread_time())

        def after(conn: Any, _cur: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
            t = time.thread_time() - conn.info["statement_t0"].pop()
            self.add(sql, t, len(params) if many else 1)

        def commit(conn: Any) -> None:
            self.commits[
                "write" if conn.get_execution_options().get("lamina_write") else "read"
            ] += 1

        hooks: dict[str, Any] = {
            "before_cursor_execute": before,
            "after_cursor_execute": after,
            "commit": commit,
        }
        modules = [vars(importlib.import_module(name)) for name in self.MODULES]
        reals = [m["driver_rows"] for m in modules]
        for name, fn in hooks.items():
            event.listen(Engine, name, fn)
        for m, real in zip(modules, reals, strict=True):

            def wrapped(c: Any, sql: str, args: Any, real: Any = real) -> Any:
                t = time.thread_time()
                try:
                    return real(c, sql, args)
                finally:
                    self.add(sql, time.thread_time() - t, 1)

            m["driver_rows"] = wrapped
        try:
            yield self
        finally:
            for m, real in zip(modules, reals, strict=True):
                m["driver_rows"] = real
            for name, fn in hooks.items():
                event.remove(Engine, name, fn)

    def report(self) -> str:
        lines = [f"{'ms':>9} {'runs':>6} {'rows':>8}  statement"]
        for sql, (n, t, rows) in sorted(self.stats.items(), key=lambda kv: -kv[1][1]):
            lines.append(f"{t * 1e3:9.1f} {int(n):6d} {int(rows):8d}  {sql}")
        total = sum(t for _, t, _ in self.stats.values()) * 1e3
        lines.append(f"{total:9.1f} in all; transactions committed: {self.commits}")
        return "\n".join(lines)


def replay(work: Path, only: frozenset[str] | None = None) -> dict[str, float]:
    from lamina.cli import server as server_cli
    from lamina.config import ServerSettings
    from lamina.protocol.bundle import decode_bundle, encode_bundle
    from lamina.server.app import open_context
    from lamina.server.deps import AccessLimits
    from lamina.server.services import access, fleet, sync

    try:
        from lamina.server.services import intake as bundles
    except ImportError:  # a checkout before session 23: the intake was sync's
        bundles = sync

    calls = [
        # a bundle replayed from its body: the route decodes it too
        ("bundle", encode_bundle(rec[1])) if rec[0] == "bundle" else rec
        for rec in _records(work / "calls.pkl")
        if only is None or rec[0] in only
    ]
    state = work / "replayed"
    rmtree(state)
    shutil.copytree(work / "before", state)
    ctx, _ = open_context(ServerSettings(data=state, admin_password="replay-" * 3))
    limits = AccessLimits()
    device = next(r[1] for r in _records(work / "calls.pkl") if r[0] in ("missing", "commit"))
    gc.collect()
    # as the server does once started (an older checkout's only froze its objects)
    getattr(server_cli, "settle_collector", gc.freeze)()
    parts: dict[str, float] = collections.defaultdict(float)
    # each bundle's ``Intake`` by its ids, for its record (two bundles are in flight at
    # once: a record need not follow its own bundle)
    intakes: dict[tuple[bytes, ...], Any] = {}
    # what the CVD's bundles stored, for its commit (an older checkout has none)
    recent = getattr(limits, "recent", None)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for rec in calls:
        t = time.thread_time()
        if rec[0] == "missing":
            sync.device_missing(ctx.engine, ctx.store, rec[1], rec[2], limits.missing, ctx.sharing)
        elif rec[0] == "bundle":
            fleet.active_cvd_of_device(ctx.engine, device)
            items = decode_bundle(rec[1])
            intake = bundles.upload_blobs(ctx.store, items, bundles.MAX_BUNDLE_RAW, limits.uploaded)
            intakes[tuple(it.id for it in items)] = intake
        elif rec[0] == "record":
            intake = intakes.pop(tuple(rec[2]), None)
            # (an older checkout's returns the count alone, its record takes no ``first``)
            first = (intake.first,) if hasattr(intake, "first") else ()
            access.record(ctx.engine, rec[1], rec[2], ctx.sharing, *first)
            if recent is not None and intake is not None:  # (as the bundle route does)
                recent.add(rec[1], intake.epoch, intake.stored)
        elif rec[0] == "commit":
            sync.commit_snapshot(
                ctx.engine,
                ctx.store,
                rec[1],
                rec[2],
                ctx.sharing,
                limits.uploaded,
                **({"recent": recent} if recent is not None else {}),
            )
        parts[rec[0]] += time.thread_time() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    total = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    ctx.store.catalog.close()
    return {"total": total, **parts}


def requests(work: Path, n: int) -> float:
    """Server CPU (ms) per authenticated device request that does no work of its own."""
    import httpx

    rmtree(work)
    (work / "corpus").mkdir(parents=True)
    (work / "corpus" / "file").write_text("one file")
    lam = LaminaE2E(work / "lamina", clean_env(), work / "corpus")
    try:
        lam.setup(start_timeout=300)
        credential = json.loads((lam.state / "agent.json").read_text())["credential"]
        auth = {"Authorization": f"Bearer {credential}"}
        with httpx.Client(base_url=lam.server.url + "/api/v1", headers=auth, timeout=60) as c:
            for i in range(n // 10 + n):  # the first tenth warms the server up
                if i == n // 10:
                    cpu = lam.server.cpu()
                r = c.post("/agent/missing", json={"ids": []})
                r.raise_for_status()
            return (lam.server.cpu() - cpu) / n * 1e3
    finally:
        lam.server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.srv_replay", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("step", choices=("capture", "replay", "requests"))
    ap.add_argument("--corpus", type=Path, help="the folder to sync (capture)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1000, help="requests to time (requests)")
    ap.add_argument(
        "--statements",
        action="store_true",
        help="also print every SQL statement's CPU, runs and rows, and the commits (replay)",
    )
    ap.add_argument(
        "--only",
        help="replay only these parts, comma-separated (missing, bundle, record, commit): "
        "e.g. bundle, the intake alone, each bundle on the state the others left",
    )
    args = ap.parse_args(argv)
    if args.step == "requests":
        print(f"server CPU {requests(args.work.resolve(), args.n):.3f} ms per request")
        return 0
    if args.step == "capture":
        if args.corpus is None:
            ap.error("capture needs --corpus")
        capture(args.corpus, args.work.resolve())
        return 0
    only = frozenset(args.only.split(",")) if args.only else None
    statements = StatementCpu()
    with statements.installed() if args.statements else contextlib.nullcontext(statements):
        cpu = replay(args.work.resolve(), only)
    if args.statements:
        print(statements.report())
    print("server CPU " + " ".join(f"{k} {v:.3f} s" for k, v in cpu.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
