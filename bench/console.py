"""Console pages at fleet scale: server time of each page with 10,000 devices and 100,000 snapshots.

``python -m bench.console`` from the project root (not part of ``make test``). Seeds a
fresh SQLite database (in a temporary folder, or ``--data``) through Lamina's own schema:
``--devices`` devices (a tenth pending, the rest centralized under five policies, some
silent, some failing, some low on disk), ``--snapshots`` snapshot rows spread over the
CVDs, tasks, layers assigned to a third of the CVDs, two collections and an audit log;
then asks every console page ``--repeat`` times in-process (the ASGI app, no network)
and prints, for each, the median wall time, the median CPU time of the process, the
median CPU time of the server alone (the process's less the test client's thread: the
figure to read on a loaded machine, where wall time also counts the waits for a CPU; the
server is CPU-bound on SQLite), the server's CPU time of the first request (the dashboard
keeps its counts for a few seconds: the first request counts) and the number of SQL
statements the last request ran, against the 200 ms target (flagged on the median of the
server's CPU time). ``--only`` times the pages whose
path contains one of the given strings; ``--data`` of an earlier run reuses its seed
(the ids are kept in ``bench-console.json`` there). Nothing is asserted: this is a
measurement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert

from bench.library_seed import LARGE_SITE, add_library
from lamina.config import ServerSettings
from lamina.db.engine import write_tx
from lamina.db.models import (
    audit_log,
    collection_members,
    collections,
    cvd_layers,
    cvds,
    devices,
    driver_profiles,
    flex_images,
    flex_policies,
    layer_versions,
    layers,
    policies,
    snapshots,
    tasks,
)
from lamina.server.app import create_app, open_context
from lamina.server.services import dashboard, drivers_index

PASSWORD = "bench-password-123"
TARGET_MS = 200.0


def _id(rnd: random.Random) -> str:
    return str(uuid.UUID(int=rnd.getrandbits(128)))


def seed(engine: Any, n_devices: int, n_snapshots: int, rnd: random.Random) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    pol = [
        {
            "id": _id(rnd),
            "name": f"policy-{i}",
            "version": 1,
            "settings": {"interval": 3600 * (i + 1)},
            "created": now,
            "updated": now,
        }
        for i in range(5)
    ]
    devs, cv, snaps, tks, assigned, members, audit = [], [], [], [], [], [], []
    models = ["ThinkPad T14", "Latitude 7440", "EliteBook 840", "OptiPlex 7010"]
    base_layer = {"id": _id(rnd), "name": "base-debian", "kind": "base", "created": now}
    versions = [
        {
            "id": _id(rnd),
            "layer_id": base_layer["id"],
            "version": v,
            "created": now,
            "root": rnd.randbytes(32),
            "whiteouts": [],
            "source_cvd": None,
            "source_snapshot": None,
            "notes": "",
            "files": 1000,
            "bytes": 10**9,
            "apps": {},
        }
        for v in (1, 2)
    ]
    coll = [
        {"id": _id(rnd), "name": "static-500", "filter": "", "created": now},
        {"id": _id(rnd), "name": "thinkpads", "filter": "model=ThinkPad*", "created": now},
    ]
    vendors = ["LENOVO", "Dell Inc.", "HP", "ASUSTeK"]
    for i in range(n_devices):
        did = _id(rnd)
        pending = i % 10 == 0
        silent = i % 7 == 0
        devs.append(
            {
                "id": did,
                "hostname": f"host-{i:05d}",
                "status": "pending" if pending else "active",
                "facts": {
                    "machine_id": did,
                    "hostname": f"host-{i:05d}",
                    "model": models[i % len(models)],
                    "sys_vendor": vendors[i % len(vendors)],
                    "product_name": f"{models[i % len(models)]} {i % 100:02d}",
                    # a laptop reports some 60 PCI/USB/ACPI modaliases
                    "modaliases": [f"pci:v{v:08X}d{i % 97:08X}sv*" for v in range(60)],
                    "os_release": {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"},
                    "disk_size": 512 * 10**9,
                },
                "credential_hash": uuid.UUID(int=rnd.getrandbits(128)).hex * 2,
                "enrolled": now - dt.timedelta(days=30),
                "last_seen": now - dt.timedelta(days=3 if silent else 0, minutes=i % 50),
                "agent_state": {"state": "idle", "disk_free": (i % 13) * 10**9},
            }
        )
        if pending:
            continue
        cid = _id(rnd)
        cv.append(
            {
                "id": cid,
                "name": f"host-{i:05d}",
                "device_id": did,
                "policy_id": pol[i % 5]["id"],
                "policy_version": 1,
                "reference": i == 1,
                "state": "active",
                "created": now - dt.timedelta(days=29),
                "last_sync": now - dt.timedelta(minutes=i % 300),
                "progress": {},
            }
        )
        for k in range(2):
            tks.append(
                {
                    "id": _id(rnd),
                    "kind": "sync",
                    "state": "failed" if (k == 1 and i % 11 == 0) else "done",
                    "progress": 100,
                    "message": "",
                    "cvd_id": cid,
                    "device_id": did,
                    "params": {},
                    "result": {},
                    "created_by": "admin",
                    "created": now - dt.timedelta(hours=2 - k),
                    "started": now - dt.timedelta(hours=2 - k),
                    "finished": now - dt.timedelta(hours=2 - k),
                }
            )
        if i % 3 == 0:
            assigned.append({"cvd_id": cid, "position": 0, "version_id": versions[i % 2]["id"]})
        if len(members) < 500:
            members.append({"collection_id": coll[0]["id"], "cvd_id": cid})
    for j in range(n_snapshots):
        c = cv[j % len(cv)]
        snaps.append(
            {
                "id": rnd.randbytes(32).hex(),
                "time": now - dt.timedelta(hours=j // len(cv)),
                "source": f"cvd:{c['id']}",
                "root": rnd.randbytes(32),
                "files": 120_000,
                "bytes": 30 * 10**9,
                "meta": {},
            }
        )
    for j in range(50_000):
        audit.append(
            {
                "time": now - dt.timedelta(minutes=j),
                "actor": "admin" if j % 3 else "helpdesk-1",
                "action": ("cvd.sync", "cvd.restore", "layer.assign", "auth.login")[j % 4],
                "target": cv[j % len(cv)]["id"],
                "detail": {},
            }
        )
    with write_tx(engine) as c:
        c.execute(insert(policies), pol)
        c.execute(insert(layers), [base_layer])
        c.execute(insert(layer_versions), versions)
        for table, rows in (
            (devices, devs),
            (cvds, cv),
            (snapshots, snaps),
            (tasks, tks),
            (cvd_layers, assigned),
            (collections, coll),
            (collection_members, members),
            (audit_log, audit),
        ):
            for k in range(0, len(rows), 5000):
                c.execute(insert(table), rows[k : k + 5000])
    library = seed_library(engine, now, rnd)
    drivers_index.fill(engine)  # as enrollment and the agent's reports write them
    pending = next(d["id"] for d in devs if d["status"] == "pending")
    return {"cvd": cv[len(cv) // 2]["id"], "policy": pol[0]["id"], "device": pending, **library}


def seed_library(engine: Any, now: dt.datetime, rnd: random.Random) -> dict[str, str]:
    """The driver library and flex at a large site's scale (``library_seed.LARGE_SITE``)."""
    rows = add_library(engine, LARGE_SITE, now, lambda _kind, _i: _id(rnd))
    return {
        "pack": rows[layers][0]["id"],
        "profile": rows[driver_profiles][0]["id"],
        "image": rows[flex_images][0]["id"],
        "flex_policy": rows[flex_policies][0]["id"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--snapshots", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument(
        "--only",
        nargs="*",
        default=[],
        help="time only pages containing these (/ alone: the dashboard)",
    )
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # starlette's TestClient deprecation notice
    from fastapi.testclient import TestClient

    data = args.data or Path(tempfile.mkdtemp(prefix="lamina-bench-console-"))
    settings = ServerSettings(data=data, admin_password=PASSWORD)
    ctx, _ = open_context(settings)
    kept = data / "bench-console.json"
    if kept.exists():
        ids = json.loads(kept.read_text())
        print(f"reusing the seed in {data}")
    else:
        t0 = time.perf_counter()
        ids = seed(ctx.engine, args.devices, args.snapshots, random.Random(1))
        kept.write_text(json.dumps(ids))
        print(
            f"seeded {args.devices} devices, {args.snapshots} snapshots in "
            f"{time.perf_counter() - t0:.1f} s ({data})"
        )
    statements = [0]

    @event.listens_for(ctx.engine, "before_cursor_execute")
    def count(*_: Any) -> None:
        statements[0] += 1

    client = TestClient(create_app(settings, ctx))
    page = client.get("/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    r = client.post(
        "/login",
        data={"user": "admin", "password": PASSWORD, "csrf": csrf.group(1)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    pages = [
        "/",
        "/dashboard/live",
        "/devices",
        "/devices?state=offline",
        "/devices?state=failing",
        "/devices?state=lowdisk",
        "/devices?q=host-0999",
        "/devices?sort=last_sync&order=desc&page=100",
        f"/cvds/{ids['cvd']}",
        f"/cvds/{ids['cvd']}/confirm/sync",
        f"/cvds/{ids['cvd']}/assign",
        "/tasks",
        "/tasks?state=failed",
        "/layers",
        "/policies",
        f"/policies/{ids['policy']}",
        "/audit",
        "/audit?user=helpdesk-1&action=cvd.*",
        "/users",
        "/tokens",
        "/collections",
        "/drivers",
        f"/drivers/packs/{ids['pack']}",
        f"/drivers/profiles/{ids['profile']}",
        f"/drivers/profiles/{ids['profile']}?test=1",
        "/flex",
        f"/flex/images/{ids['image']}",
        "/flex/policies",
        f"/flex/policies/{ids['flex_policy']}",
        "/flex/entitlements",
        "/flex/instances",
        "/groups",
        f"/cvds/{ids['cvd']}/migrate",
        f"/cvds/{ids['cvd']}/restore-system",
        f"/cvds/{ids['cvd']}/migrate-os",
        f"/devices/{ids['device']}/provision",
    ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs (times grow with it)")
    print(
        f"{'page':50} {'wall ms':>8} {'worst':>8} {'CPU ms':>8} {'server CPU':>10} {'first':>7} {'SQL':>5}  "
        f"target {TARGET_MS:.0f} ms"
    )
    for path in pages:
        if args.only and not any(o == path or (o != "/" and o in path) for o in args.only):
            continue
        times, cpu, server = [], [], []
        # One request unmeasured (templates compiled, caches of SQLAlchemy warm), then the
        # first measured one counts the dashboard afresh ("first"), the others may not.
        assert client.get(path).status_code == 200, path
        dashboard.forget_recent(ctx.engine)
        for _ in range(args.repeat):
            statements[0] = 0
            t, p, own = time.perf_counter(), time.process_time(), time.thread_time()
            resp = client.get(path)
            spent, client_cpu = time.process_time() - p, time.thread_time() - own
            cpu.append(spent * 1000)
            # The server's share: every thread of the process but the test client's own
            # (the event loop and the worker thread that ran the view).
            server.append((spent - client_cpu) * 1000)
            times.append((time.perf_counter() - t) * 1000)
            assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
        med, med_cpu, med_server = (statistics.median(x) for x in (times, cpu, server))
        flag = "" if med_server < TARGET_MS else "  OVER"
        print(
            f"{path[:50]:50} {med:8.1f} {max(times):8.1f} {med_cpu:8.1f} {med_server:10.1f} "
            f"{server[0]:7.1f} {statements[0]:5d}{flag}"
        )


if __name__ == "__main__":
    main()
