"""``lamina token``, ``lamina device``, ``lamina policy``, ``lamina task``: the fleet's admin commands."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from typing import Annotated, Any

import typer

from lamina.cli.api_commands import ApiCommands
from lamina.cli.client import Api
from lamina.cli.common import DeviceArg, JsonOpt, emit, emit_rows, option_group, parse_duration
from lamina.cli.output import age, emit_json, human_bytes, print_table, safe
from lamina.cli.progress import err_console
from lamina.errors import LaminaError, UsageError

token_app = typer.Typer(
    help="Enrollment tokens, sessions and API tokens: create, list, revoke.", no_args_is_help=True
)
device_app = typer.Typer(help="Enrolled devices.", no_args_is_help=True)
policy_app = typer.Typer(
    help="CVD policies: schedule, retention, protected area, bandwidth.", no_args_is_help=True
)
task_app = typer.Typer(help="Long operations and their progress.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    expires: Annotated[str, typer.Option(help="Lifetime, e.g. 1h, 7d.")] = "1h",
    policy: Annotated[
        str | None, typer.Option(help="Centralize enrolling devices with this policy.")
    ] = None,
    reference: Annotated[
        bool, typer.Option("--reference", help="Devices become reference CVDs.")
    ] = False,
    uses: Annotated[int, typer.Option(help="How many devices may enroll with it.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Create an enrollment token for `lamina agent enroll`."""
    doc = Api.from_login().post(
        "/tokens",
        {
            "expires_in": parse_duration(expires),
            "policy": policy,
            "reference": reference,
            "uses": uses,
        },
    )
    emit(doc, as_json, doc["token"])


@token_app.command("api")
def token_api(
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. 'backup report'.")],
    expires: Annotated[str, typer.Option(help="Lifetime, e.g. 30d.")] = "90d",
    as_json: JsonOpt = False,
) -> None:
    """Create an API token acting as you (for scripts: LAMINA_TOKEN); shown once."""
    doc = Api.from_login().post(
        "/auth/tokens", {"name": name, "expires_in": parse_duration(expires)}
    )
    emit(doc, as_json, doc["token"])


def _token_line(r: dict[str, Any]) -> str:
    uses = f"{r['uses']}/{r['max_uses']}" if r["max_uses"] is not None else "-"
    return (
        f"{r['id']}  {r['kind']:<10} {r['owner']:<16} {r['created'][:19]}  "
        f"expires {(r['expires'] or '-')[:19]:<19}  used {(r['last_used'] or '-')[:19]:<19}  "
        f"uses {uses:<7} {r['state']}{' (this session)' if r['current'] else ''}"
    )


TokenIdArg = Annotated[str, typer.Argument(help="Token id (from `lamina token list`).")]
tokens = ApiCommands(token_app, "/tokens", ("token_id", TokenIdArg))
tokens.list(
    _token_line,
    "List sessions, API tokens and enrollment tokens: kind, owner, dates, uses, state.",
)
tokens.call(
    "revoke",
    "DELETE",
    "",
    lambda d: f"{d['kind']} token {d['id']} of {d['owner']} revoked",
    "Revoke a session, API token or enrollment token by id: it stops working at once.",
)


#: The health states the console's dashboard counts (``services/dashboard.py``).
STATES = ("pending", "online", "offline", "failing", "lowdisk")


def _complete_state(incomplete: str) -> list[str]:
    return [s for s in STATES if s.startswith(incomplete)]


StateFilterOpt = Annotated[
    str | None,
    typer.Option(
        "--state",
        help="Only devices in this state: pending, online, offline, failing or lowdisk.",
        autocompletion=_complete_state,
    ),
]


def fleet_rows(api: Api, state: str | None) -> list[dict[str, Any]]:
    """Every device (the dashboard's device list, page after page), with ``name``: its
    hostname, or ``hostname~ID8`` when another device has the same hostname."""
    if state is not None and state not in STATES:
        raise UsageError(f"unknown state {state!r}: one of {', '.join(STATES)}")
    rows: list[dict[str, Any]] = []
    page = 1
    while True:
        doc = api.get("/fleet", params={"state": state or "", "page": page})
        rows += doc["rows"]
        if page >= doc["pages"]:
            break
        page += 1
    hosts = Counter(r["hostname"] for r in rows)
    for r in rows:
        shared = hosts[r["hostname"]] > 1
        r["name"] = f"{r['hostname']}~{r['id'][:8]}" if shared else r["hostname"]
    return rows


def health_of(r: dict[str, Any]) -> str:
    """The device's health words, or its status (rejected, revoked, archived...)."""
    return ",".join(r["health"]) or r["status"]


@device_app.command("list")
def device_list(
    state: StateFilterOpt = None,
    pending: Annotated[
        bool, typer.Option("--pending", help="Only devices waiting for a CVD (--state pending).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List devices: hostname, state, policy, last sync, layers, agent version, model.

    A hostname two devices share is shown as HOSTNAME~ID8. Examples:

      lamina device list --state failing

      lamina device list --json | jq -r '.[].id'
    """
    if pending and state not in (None, "pending"):
        raise UsageError("give either --pending or --state, not both")
    api = Api.from_login()
    rows = fleet_rows(api, "pending" if pending else state)
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["ID", "HOSTNAME", "STATE", "POLICY", "LAST SYNC", "LAYERS", "AGENT", "MODEL"],
        (
            [
                r["id"][:8],
                r["name"],
                health_of(r),
                r["policy"],
                age(r["last_sync"]) if r["cvd_id"] else "",
                " + ".join(r["layers"]),
                r["agent_version"],
                f"{r['vendor']} {r['model']}".strip(),
            ]
            for r in rows
        ),
    )


@device_app.command("show")
def device_show(device: DeviceArg, as_json: JsonOpt = False) -> None:
    """Show a device and its hardware facts (DMI, modaliases, disks, network)."""
    r = Api.from_login().get(f"/devices/{device}")
    if as_json:
        emit_json(r)
        return
    f = r["facts"]
    typer.echo(f"{r['id']}  {r['hostname']}  {r['status']}  CVD {r['cvd_id'] or '-'}")
    for k in (
        "sys_vendor",
        "product_name",
        "board_name",
        "bios_version",
        "cpu_vendor",
        "boot_mode",
    ):
        typer.echo(f"  {k:<14} {safe(str(f.get(k) or '-'))}")
    for n in f.get("network") or []:
        typer.echo(f"  net {safe(n.get('name', ''))} {safe(n.get('mac', ''))}")
    for d in f.get("disks") or []:
        typer.echo(f"  disk {safe(d.get('name', ''))} {human_bytes(int(d.get('size') or 0))}")
    typer.echo(f"  {len(f.get('modaliases') or [])} PCI/USB devices")


devices = ApiCommands(device_app, "/devices", ("device", DeviceArg))
devices.post(
    "reject",
    lambda d: f"device {d['hostname']} rejected",
    "Reject a pending device: its credential stops working.",
)
devices.post(
    "revoke",
    lambda d: f"device {d['hostname']} revoked",
    "Revoke a device's credential: every call it makes is refused from now on.",
)


_SIZE = re.compile(r"^(\d+)([KMG]?)$", re.IGNORECASE)


def parse_rate(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"invalid rate {text!r}: bytes per second, e.g. 500K, 10M")
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]


IntervalOpt = Annotated[str | None, typer.Option(help="Upload interval, e.g. 1h.")]
KeepLastOpt = Annotated[int | None, typer.Option(help="Always keep the newest N snapshots.")]
KeepHourlyOpt = Annotated[int | None, typer.Option(help="Keep one snapshot per hour for N hours.")]
KeepDailyOpt = Annotated[int | None, typer.Option(help="Keep one per day for N days.")]
KeepWeeklyOpt = Annotated[int | None, typer.Option(help="Keep one per week for N weeks.")]
KeepMonthlyOpt = Annotated[int | None, typer.Option(help="Keep one per month for N months.")]
IncludeOpt = Annotated[
    list[str] | None, typer.Option("--include", help="Glob to protect (repeatable).")
]
ExcludeOpt = Annotated[
    list[str] | None, typer.Option("--exclude", help="Glob to skip (repeatable).")
]
ExceptionOpt = Annotated[
    list[str] | None,
    typer.Option("--exception", help="Glob re-included inside an exclude (repeatable)."),
]
ClassOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--class", help="Path class to protect: system, applications, user_data, machine_identity."
    ),
]
BandwidthOpt = Annotated[
    str | None, typer.Option(help="Upload limit in bytes/s, e.g. 10M (0: none).")
]


def _given_settings(
    interval: str | None,
    keep_last: int | None,
    keep_hourly: int | None,
    keep_daily: int | None,
    keep_weekly: int | None,
    keep_monthly: int | None,
    include: list[str] | None,
    exclude: list[str] | None,
    exception: list[str] | None,
    klass: list[str] | None,
    bandwidth: str | None,
) -> dict[str, Any]:
    """The policy settings given on the command line (the others are left out)."""
    given = {
        "interval": parse_duration(interval) if interval is not None else None,
        "keep_last": keep_last,
        "keep_hourly": keep_hourly,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "include": include,
        "exclude": exclude,
        "exceptions": exception,
        "classes": klass,
        "bandwidth_limit": parse_rate(bandwidth) if bandwidth is not None else None,
    }
    return {k: v for k, v in given.items() if v is not None and v != []}


#: The policy settings' options, given to a command as ``settings`` (:func:`_given_settings`).
settings_options = option_group(
    "settings",
    [
        ("interval", IntervalOpt, None),
        ("keep_last", KeepLastOpt, None),
        ("keep_hourly", KeepHourlyOpt, None),
        ("keep_daily", KeepDailyOpt, None),
        ("keep_weekly", KeepWeeklyOpt, None),
        ("keep_monthly", KeepMonthlyOpt, None),
        ("include", IncludeOpt, None),
        ("exclude", ExcludeOpt, None),
        ("exception", ExceptionOpt, None),
        ("klass", ClassOpt, None),
        ("bandwidth", BandwidthOpt, None),
    ],
    _given_settings,
)


def _print_policy(doc: dict[str, Any], as_json: bool) -> None:
    emit(doc, as_json, _policy_line(doc))


def _policy_line(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    return (
        f"policy {doc['name']} v{doc['version']} ({doc['cvds']} CVDs): every {s['interval']}s; keep last "
        f"{s['keep_last']}, {s['keep_hourly']}h/{s['keep_daily']}d/{s['keep_weekly']}w/{s['keep_monthly']}m; "
        f"classes {','.join(s['classes'])}"
    )


PolicyArg = Annotated[str, typer.Argument(help="Policy name or id.")]


@policy_app.command("create")
@settings_options
def policy_create(
    name: Annotated[str, typer.Argument(help="Policy name.")],
    settings: dict[str, Any],
    as_json: JsonOpt = False,
) -> None:
    """Create a CVD policy (defaults: hourly uploads, keep 24h/7d/4w/12m)."""
    doc = Api.from_login().post("/policies", {"name": name, "settings": settings})
    _print_policy(doc, as_json)


@policy_app.command("update")
@settings_options
def policy_update(name: PolicyArg, settings: dict[str, Any], as_json: JsonOpt = False) -> None:
    """Change a policy; every CVD using it moves to the new version."""
    api = Api.from_login()
    current = api.get(f"/policies/{name}")
    doc = api.put(f"/policies/{name}", {"settings": {**current["settings"], **settings}})
    _print_policy(doc, as_json)


policies = ApiCommands(policy_app, "/policies", ("name", PolicyArg))
policies.list(_policy_line, "List policies.")
policies.show(_policy_line, "Show one policy.")


def _task_text(t: dict[str, Any]) -> str:
    return f"{t['id']}  {t['kind']:<8} {t['state']:<8} {t['progress']:>3}%  {t['message']}"


@task_app.command("list")
def task_list(
    state: Annotated[str | None, typer.Option(help="Only tasks in this state.")] = None,
    cvd: Annotated[str | None, typer.Option(help="Only tasks of this CVD (id).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List tasks, newest first."""
    rows = Api.from_login().get(
        "/tasks", params={k: v for k, v in {"state": state, "cvd": cvd}.items() if v}
    )
    emit_rows(rows, as_json, _task_text)


TaskIdArg = Annotated[str, typer.Argument(help="Task id, or a unique prefix of one.")]


tasks = ApiCommands(task_app, "/tasks", ("task_id", TaskIdArg))
tasks.show(_task_text, "Show a task.")
tasks.post("cancel", _task_text, "Cancel a queued task, or a staged one before a boot applies it.")


def task_line(t: dict[str, Any]) -> str:
    return f"{t['state']} {t['progress']}% {t['message']}".rstrip()


@task_app.command("watch")
def task_watch(
    task_id: TaskIdArg,
    timeout: Annotated[str, typer.Option(help="Give up after this long.")] = "1h",
    interval: Annotated[float, typer.Option(help="Seconds between looks at the task.")] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Follow a task until it ends (or waits for a reboot).

    On a terminal one line is updated in place; otherwise (a log, a pipe) one line is
    printed per change. Example:

      lamina task watch 3f2a --timeout 30m
    """
    api = Api.from_login()
    deadline = time.monotonic() + parse_duration(timeout)
    terminal = err_console.is_terminal
    shown = ""
    while True:
        t = api.get(f"/tasks/{task_id}")
        line = task_line(t)
        if line != shown:
            if terminal:
                err_console.print(f"{line:<{len(shown)}}", end="\r", markup=False, highlight=False)
            else:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            shown = line
        if t["state"] in ("done", "failed", "waiting", "cancelled") or time.monotonic() > deadline:
            break
        time.sleep(interval)
    if terminal:
        err_console.print()
    emit(t, as_json, _task_text(t))
    if t["state"] == "failed":
        raise LaminaError(f"task {t['id']} failed: {t['message']}")
