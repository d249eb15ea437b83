"""Load test: N endpoints centralizing at once against one Lamina server.

``python -m bench.load`` (``make bench-load``) from the project root; not part of ``make test``
or ``make bench``. See bench/README.md.

Every endpoint is a directory root with its own agent state folder. The endpoints share
most of their content (a base tree copied from /usr by bench.run's corpus builder, 30 MiB by
default) and each adds its own files (3 MiB of random bytes by default, plus its hostname
and machine id), so about 90% of what they hold is common. All are enrolled with one
token that names a policy (centralized at enrollment), then their first ``lamina agent run
--once`` is started at the same moment (or ``--parallel`` at a time) and timed.

Before that, endpoint 0 is centralized alone into a separate throwaway server (the
calibration): its time is the one-endpoint baseline, and its store size is what the first
endpoint costs, so the load run's store growth gives the cost of each extra endpoint.

Bounded: every agent process has a timeout (``--agent-timeout``), the whole load phase a
deadline (``--deadline``), every CLI call a timeout; the server listens on 127.0.0.1 only
and is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    CommandFailed,
    clean_env,
    human_bytes,
    prepare_work,
    rmtree,
    say,
    tree_size,
    warm_up,
    warn,
)
from bench.corpus import DEFAULT_GROUPS, build_corpus
from bench.e2e_procs import git_revision
from bench.load_agents import (
    PRIORITIES,
    AgentRun,
    Endpoint,
    duplicate_blobs,
    enroll_all,
    make_endpoints,
    run_agents,
)
from bench.load_seen import agent_env, agent_polls, describe
from bench.load_servers import (
    ANSWER,
    CLI_TIMEOUT,
    POLL_ROUTES,
    Deployment,
    MiB,
    Probe,
    all_polls,
    commits_by_status,
    describe_commits,
    host_share,
    local_pg_s3,
    pack_bytes,
    poll_buckets,
    poll_p95_ms,
    polls_within,
    route_p95,
    rss,
    start_deployment,
    start_server,
    store_args,
)

DEFAULT_WORK = ROOT / "bench" / "work" / "load"
DEFAULT_RESULTS = ROOT / "bench" / "results-load.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoints", type=int, default=200, help="simulated endpoints (default 200)")
    ap.add_argument(
        "--parallel",
        type=int,
        default=0,
        help="agents running at once (default 0: all of them at the same moment)",
    )
    ap.add_argument(
        "--agent-priority",
        choices=PRIORITIES,
        default="idle",
        help="idle (default): agents under SCHED_IDLE, as if each had a machine of its own; "
        "normal: the server's priority, so it gets ~1/N of the cores",
    )
    ap.add_argument("--shared-mb", type=float, default=30.0, help="shared base tree (MiB)")
    ap.add_argument("--unique-mb", type=float, default=3.0, help="unique files per endpoint (MiB)")
    ap.add_argument(
        "--db", default=None, help="also run against --servers servers on this database URL"
    )
    ap.add_argument("--store", default=None, help="... and this store URL (s3://...)")
    ap.add_argument(
        "--pg-s3",
        action="store_true",
        help="also run on --servers servers over a PostgreSQL and an S3 started for the run",
    )
    ap.add_argument(
        "--servers", type=int, default=2, help="servers for the --db/--store run (default 2)"
    )
    ap.add_argument(
        "--share-threshold",
        type=int,
        default=None,
        help="the servers' LAMINA_SHARE_THRESHOLD (default: the server's own, 2)",
    )
    ap.add_argument(
        "--no-sqlite", action="store_true", help="skip the run on one embedded (SQLite) server"
    )
    ap.add_argument(
        "--agent-timeout",
        type=float,
        default=1200.0,
        help="seconds before one agent process is killed (default 1200)",
    )
    ap.add_argument(
        "--deadline",
        type=float,
        default=2400.0,
        help="seconds before the whole load phase is stopped (default 2400)",
    )
    ap.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip endpoint 0 alone on a throwaway server (then no per-endpoint growth)",
    )
    ap.add_argument("--no-check", action="store_true", help="skip `lamina store check` afterwards")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="default bench/work/load")
    ap.add_argument("--output", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--keep", action="store_true", help="leave the work folder afterwards")
    args = ap.parse_args(argv)
    if args.endpoints < 1:
        ap.error("--endpoints must be at least 1")
    if (args.db is None) != (args.store is None):
        ap.error("--db and --store go together")
    return args


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def describe_endpoints(
    args: argparse.Namespace, work: Path, doc: dict[str, Any]
) -> tuple[list[Endpoint], Any, Any]:
    say(f"building the shared base tree ({args.shared_mb:g} MiB from /usr)", "bold")
    base = work / "base"
    build_corpus(base, DEFAULT_GROUPS, args.shared_mb * MiB, "/")
    b = tree_size(base)
    say(f"  {b.files} files, {human_bytes(b.apparent)}")
    n = args.endpoints
    say(f"making {n} endpoints (base + {args.unique_mb:g} MiB unique each)", "bold")
    endpoints, made_s = make_endpoints(work, base, n, args.unique_mb, args.seed)
    e0 = tree_size(endpoints[0].root)
    say(
        f"  in {made_s:.1f} s; each {e0.files} files, {human_bytes(e0.apparent)} "
        f"({100 * b.apparent / e0.apparent:.0f}% shared); all {human_bytes(e0.apparent * n)}"
    )
    doc["endpoint"] = {
        "files": e0.files,
        "bytes": e0.apparent,
        "shared_bytes": b.apparent,
        "unique_bytes": endpoints[0].unique_bytes,
        "unique_files": endpoints[0].unique_files,
        "shared_fraction": b.apparent / e0.apparent,
        "all_endpoints_bytes": e0.apparent * n,
    }
    return endpoints, b, e0


def calibrate(
    args: argparse.Namespace, work: Path, env: dict[str, str], ep: Endpoint
) -> tuple[dict[str, Any], int | None]:
    """Endpoint 0 alone on a throwaway embedded server: the one-endpoint time and store size."""
    say("calibration: endpoint 0 alone on a throwaway embedded server", "bold")
    cal_ep = dataclasses.replace(
        ep, state=work / "calibration" / "state", home=work / "calibration" / "config"
    )
    srv, admin, token = start_server(work / "calibration", "server", env, [])
    try:
        bad = enroll_all([cal_ep], srv.url, token, env)
        if bad:
            raise CommandFailed(bad[0])
        before = pack_bytes(admin, store_args(srv.data, None, None))
        warm_up(cal_ep.root)
        os.sync()
        runs, wall, info = run_agents(
            [cal_ep],
            env,
            parallel=1,
            agent_timeout=args.agent_timeout,
            deadline=args.deadline,
            servers=[srv],
            logs=work / "calibration" / "logs",
        )
        single_pack = pack_bytes(admin, store_args(srv.data, None, None)) - before
        r = runs[0]
        if not r.ok:
            raise CommandFailed(f"exit {r.returncode}: {r.stderr_tail}")
        say(
            f"  {wall:.2f} s alone, uploaded {human_bytes(r.uploaded_bytes)}, "
            f"store {human_bytes(single_pack)} (server CPU {info['cpu_s']:.1f} s)"
        )
        return {
            "seconds": wall,
            "server_cpu_s": info["cpu_s"],
            "pack_bytes": single_pack,
            "run": dataclasses.asdict(r),
        }, single_pack
    except CommandFailed as e:
        warn(f"calibration failed (no per-endpoint growth): {e}")
        return {"error": str(e)}, None
    finally:
        srv.stop()
        rmtree(work / "calibration")


def load_phase(
    args: argparse.Namespace,
    work: Path,
    env: dict[str, str],
    endpoints: list[Endpoint],
    name: str,
    db: str | None,
    store: str | None,
    count: int,
) -> dict[str, Any]:
    """Enroll every endpoint (spread over the servers), start all agents, measure, check."""
    n = len(endpoints)
    say(f"{name}: {count} server(s), {'--db/--store' if db else 'embedded'}; enrolling {n}", "bold")
    out: dict[str, Any] = {
        "name": name,
        "servers": count,
        "agent_priority": args.agent_priority,
        "failures": [],
    }
    failures: list[str] = out["failures"]
    logs = work / f"logs-{name}"
    states = [
        dataclasses.replace(
            ep, state=ep.state.with_name(f"state-{name}"), home=ep.home.with_name(f"config-{name}")
        )
        for ep in endpoints
    ]
    dep: Deployment | None = None
    try:
        senv = dict(env)
        if args.share_threshold is not None:
            senv["LAMINA_SHARE_THRESHOLD"] = str(args.share_threshold)
        try:
            dep = start_deployment(work, senv, name, db, store, count)
        except CommandFailed as e:
            say(f"the server did not start:\n{e}", "bold red")
            failures.append(f"server: {e}")
            return out
        t0 = time.perf_counter()
        bad: list[str] = []
        for i, srv in enumerate(dep.servers):
            bad += enroll_all(states[i::count], srv.url, dep.token, env)
        out["enroll_s"] = round(time.perf_counter() - t0, 2)
        say(f"  enrolled in {out['enroll_s']:.1f} s ({len(bad)} failures)")
        failures += [f"enroll {b}" for b in bad]
        enrolled = [ep for ep in states if not any(f"ep-{ep.index:03d}:" in x for x in bad)]
        before = pack_bytes(dep.admin, dep.store_args)
        for ep in enrolled:
            warm_up(ep.root)
        os.sync()
        routes0, commits0 = poll_buckets(dep.servers), commits_by_status(dep.servers)
        answers0 = all_polls(poll_buckets(dep.servers, ANSWER))
        say(
            f"  load: {len(enrolled)} agents, "
            f"{'all at once' if args.parallel <= 0 else f'{args.parallel} at a time'}, "
            f"priority {args.agent_priority}"
        )
        seen = work / f"polls-{name}"  # each poll's time as its agent saw it
        with Probe(dep.servers) as probe:
            runs, wall, info = run_agents(
                enrolled,
                agent_env(env, seen),
                priority=args.agent_priority,
                parallel=args.parallel,
                agent_timeout=args.agent_timeout,
                deadline=args.deadline,
                servers=dep.servers,
                logs=logs,
            )
        out["probe"] = probe.figures()
        out["agent_polls"] = agent_polls(seen)
        routes1 = poll_buckets(dep.servers)
        out["commits"] = commits_by_status(dep.servers, commits0)
        answers1 = all_polls(poll_buckets(dep.servers, ANSWER))
        # the server's own part: from each poll read whole (the agent's body sent) to its answer
        out["answer_p95_ms"] = poll_p95_ms(answers0, answers1)[0]
        answered = {b: n - answers0.get(b, 0.0) for b, n in answers1.items()}
        out["answers_within"] = {f"{ms} ms": polls_within(answered, ms / 1000) for ms in (50, 100)}
        polls0, polls1 = all_polls(routes0), all_polls(routes1)
        p95, polls = poll_p95_ms(polls0, polls1)
        # the polls by histogram bucket (upper bound in seconds: cumulative count)
        diff = {b: polls1[b] - polls0.get(b, 0.0) for b in sorted(polls1)}
        out["poll_buckets"] = {str(b): n for b, n in diff.items()}
        out["polls_within"] = {f"{ms} ms": polls_within(diff, ms / 1000) for ms in (50, 100)}
        out["poll_buckets_by_route"] = {
            route: {str(b): n - routes0[route].get(b, 0.0) for b, n in sorted(buckets.items())}
            for route, buckets in routes1.items()
        }
        after = pack_bytes(dep.admin, dep.store_args)
        cvds = dep.admin.json("cvd", "list", timeout=CLI_TIMEOUT)
        rss_end = max(rss(s) for s in dep.servers)
    finally:
        if dep is not None:
            for s in dep.servers:
                s.stop()
    out["duplicate_blobs"] = duplicate_blobs(dep.servers[0].data) if not db else None
    out["store_check"] = store_check(args, dep, failures)
    out.update(figures(runs, wall, info, before, after, cvds, rss_end, p95, polls, failures, args))
    out["runs"] = [dataclasses.asdict(r) for r in runs]
    out["server_samples"] = info["samples"]
    return out


def store_check(args: argparse.Namespace, dep: Deployment, failures: list[str]) -> dict[str, Any]:
    if args.no_check:
        return {}
    say("  store check (servers stopped)")
    try:
        r = dep.admin.run("store", "check", *dep.store_args, timeout=1800)
    except CommandFailed as e:
        failures.append(f"store check: {e}")
        say(f"  store check FAILED: {e}", "bold red")
        return {"ok": False, "error": str(e)}
    say(f"  {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else 'ok'}")
    return {"ok": True, "seconds": r.seconds, "output": r.stdout.strip()[-2000:]}


def figures(
    runs: list[AgentRun],
    wall: float,
    info: dict[str, Any],
    before: int,
    after: int,
    cvds: list[dict[str, Any]],
    rss_end: int,
    p95: float | None,
    polls: int,
    failures: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The load phase's figures, each beside its goal; failed runs added to ``failures``."""
    ok = [r for r in runs if r.ok]
    nonzero = [r for r in runs if r.returncode not in (0, None) or r.timed_out]
    times = [r.seconds for r in ok if r.seconds is not None]
    uploaded = sum(r.uploaded_bytes for r in runs)
    growth = after - before
    snaps = sum(1 for c in cvds if c.get("snapshots"))
    if snaps != len(ok):
        failures.append(f"{len(ok)} agents succeeded but {snaps} CVDs have a snapshot")
    for r in runs:
        if not r.ok:
            why = "timed out" if r.timed_out else f"exit {r.returncode}"
            if r.returncode == 0 and not r.synced:
                why = "exit 0 but did not sync"
            failures.append(f"ep-{r.endpoint:03d}: {why}")
    return {
        "endpoints": len(runs),
        "wall_s": round(wall, 2),
        "ok": len(ok),
        "errors": len(runs) - len(ok),
        "errors_nonzero_exit": len(nonzero),
        "logical_bytes": sum(r.bytes for r in ok),
        "uploaded_bytes": uploaded,
        # Distinct content: what the store grew by (each blob stored once, compressed and
        # sealed, as the uploads are compressed), so a ratio of 1.0 means each sent once.
        "distinct_bytes": growth,
        "uploaded_per_distinct": uploaded / growth if growth > 0 else None,
        "agent_seconds": {
            "min": min(times) if times else None,
            "median": statistics.median(times) if times else None,
            "p90": pct(times, 0.9) if times else None,
            "max": max(times) if times else None,
        },
        "poll_p95_ms": p95,
        "polls": polls,
        "pack_bytes_before": before,
        "pack_bytes_after": after,
        "cvds_with_a_snapshot": snaps,
        "agents_cpu_s": round(sum(r.cpu_s for r in runs), 2),
        "agent_peak_rss_max": max((r.peak_rss for r in runs), default=0),
        "server_cpu_s": info["cpu_s"],
        "host_busy_s": info["host_busy_s"],
        "host_idle_s": info["host_idle_s"],
        "bench_cpu_s": info["bench_cpu_s"],
        "server_peak_rss": info["peak_rss"],
        "server_rss_end": rss_end,
        "max_agents_running": info["max_agents_running"],
        "stderr_of_failed": [
            {"endpoint": r.endpoint, "stderr": r.stderr_tail} for r in nonzero[:10]
        ],
    }


GOALS = {"uploaded_per_distinct": 1.2, "poll_p95_ms": 100.0, "server_peak_rss": 500 * 10**6}


def print_phase(ph: dict[str, Any], single_pack: int | None) -> None:
    if "wall_s" not in ph:
        return
    a = ph["agent_seconds"]
    ratio = ph["uploaded_per_distinct"]
    p95 = ph["poll_p95_ms"]
    seen = ph.get("agent_polls")
    seen_p95 = seen.get("p95_ms") if seen else None
    by_route = (seen or {}).get("by_route", {})

    def goal(key: str, ok: bool) -> str:
        return f"(goal {'≤' if key != 'poll_p95_ms' else '<'} {GOALS[key]:g}: {'met' if ok else 'NOT met'})"

    rows = [
        ("wall time, first start to last exit", f"{ph['wall_s']:.1f} s"),
        (
            "per agent (min / median / p90 / max)",
            " / ".join("—" if v is None else f"{v:.1f}" for v in a.values()) + " s",
        ),
        ("errors (not synced, any reason)", f"{ph['errors']} (goal 0)"),
        ("agents' commits", describe_commits(ph.get("commits"))),
        (
            "uploaded / distinct bytes",
            "—"
            if ratio is None
            else f"{human_bytes(ph['uploaded_bytes'])} / {human_bytes(ph['distinct_bytes'])} = "
            f"{ratio:.2f} {goal('uploaded_per_distinct', ratio <= GOALS['uploaded_per_distinct'])}",
        ),
        (
            "agent polls p50 / p95 / p99, as the agents saw them",
            describe(seen)
            + (
                ""
                if seen_p95 is None
                else f" {goal('poll_p95_ms', seen_p95 < GOALS['poll_p95_ms'])}"
            ),
        ),
        (
            "  less each agent's own wait for a core (SCHED_IDLE)",
            describe((seen or {}).get("less_own_wait")),
        ),
        (
            "  p95 of /agent/config, /agent/work",
            " · ".join(
                "—"
                if r not in by_route
                else f"{by_route[r]['p95_ms']:.1f} ms ({by_route[r]['polls']})"
                for r in POLL_ROUTES
            ),
        ),
        (
            "  the servers' histogram: p95 bucket; within 50, 100 ms",
            "—"
            if p95 is None
            else f"≤ {p95:.0f} ms over {ph['polls']} polls ("
            + " · ".join(route_p95(ph, r) for r in POLL_ROUTES)
            + "); "
            + " · ".join(
                "—" if v is None else f"{100 * v:.1f}%" for v in ph.get("polls_within", {}).values()
            ),
        ),
        (
            "  from the poll read whole: p95; within 50, 100 ms",
            "—"
            if ph.get("answer_p95_ms") is None
            else f"≤ {ph['answer_p95_ms']:.0f} ms; "
            + " · ".join(
                "—" if v is None else f"{100 * v:.1f}%"
                for v in ph.get("answers_within", {}).values()
            ),
        ),
        (
            "light probe p50 / p95 (GET /health, client)",
            "—"
            if "p95_ms" not in ph.get("probe", {})
            else f"{ph['probe']['p50_ms']:.0f} / {ph['probe']['p95_ms']:.0f} ms over "
            f"{ph['probe']['requests']} requests ({ph['probe']['failed']} failed)",
        ),
        ("agents' scheduling", ph.get("agent_priority", "—")),
        (
            "server peak RSS (psutil)",
            f"{human_bytes(ph['server_peak_rss'])} "
            f"(goal ≤ 500 MB: {'met' if ph['server_peak_rss'] <= GOALS['server_peak_rss'] else 'NOT met'})",
        ),
        ("CPU: servers / all agents", f"{ph['server_cpu_s']:.1f} s / {ph['agents_cpu_s']:.1f} s"),
        ("CPU of the host's cores: busy / idle", host_share(ph)),
        ("largest agent peak RSS", human_bytes(ph["agent_peak_rss_max"])),
        ("first endpoint alone (store)", "—" if single_pack is None else human_bytes(single_pack)),
        (
            "store check",
            "—" if not ph["store_check"] else ("ok" if ph["store_check"].get("ok") else "FAILED"),
        ),
    ]
    width = max(len(x) for x, _ in rows)
    say(f"{ph['name']}: {ph['endpoints']} endpoints on {ph['servers']} server(s)", "bold")
    for x, v in rows:
        say(f"  {x:<{width}}  {v}")
    for f in ph["stderr_of_failed"]:
        say(f"--- ep-{f['endpoint']:03d} stderr:\n{f['stderr'] or '(empty)'}", "red")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: each phase's `finally` stops the servers and agents it
    # started (killed by the default action, the bench left its `lamina server` running).
    signal.signal(signal.SIGTERM, _interrupt)
    t_start = time.perf_counter()
    work: Path = args.work.resolve()
    env = clean_env()
    prepare_work(work)
    doc: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": {k: (os.fspath(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_at_start": list(os.getloadavg()),
            "python": sys.version.split()[0],
        },
        "git": {"at_start": git_revision()},
    }
    endpoints, _, _ = describe_endpoints(args, work, doc)
    single_pack: int | None = None
    if not args.no_calibration:
        doc["calibration"], single_pack = calibrate(args, work, env, endpoints[0])
    phases = []
    if not args.no_sqlite:
        phases.append(load_phase(args, work, env, endpoints, "sqlite", None, None, 1))
    if args.db:
        phases.append(
            load_phase(args, work, env, endpoints, "pg-s3", args.db, args.store, args.servers)
        )
    elif args.pg_s3:
        with local_pg_s3(work) as (db, store):
            phases.append(load_phase(args, work, env, endpoints, "pg-s3", db, store, args.servers))
    say("")
    for ph in phases:
        print_phase(ph, single_pack)
    failures = [f"[{ph['name']}] {f}" for ph in phases for f in ph["failures"]]
    doc.update(
        {
            "duration_s": round(time.perf_counter() - t_start, 1),
            "phases": phases,
            "failures": failures,
        }
    )
    doc["machine"]["load_at_end"] = list(os.getloadavg())
    doc["git"]["at_end"] = git_revision()
    if doc["git"]["at_start"] != doc["git"]["at_end"]:
        warn(f"the checkout changed during the run: {doc['git']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    say(f"results written to {args.output} (whole run {doc['duration_s']:.0f} s)")
    if not args.keep:
        rmtree(work)
    if failures:
        say("FAILURES:\n  " + "\n  ".join(failures[:30]), "bold red")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
