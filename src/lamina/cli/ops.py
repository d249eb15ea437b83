"""``lamina status`` and ``lamina event``: the fleet's health at a glance, and what needs a look."""

from __future__ import annotations

from typing import Annotated

import typer

from lamina.cli.api_commands import ApiCommands
from lamina.cli.client import Api
from lamina.cli.common import JsonOpt
from lamina.cli.output import age, emit_json, human_bytes, print_table

event_app = typer.Typer(
    help="Events: failures the server and the agents report, by severity, until acknowledged.\n\n"
    "Example: lamina event list --pending; lamina event ack 42",
    no_args_is_help=True,
)

#: The dashboard's words, in its order.
COUNTS = (
    ("pending", "pending"),
    ("online", "online"),
    ("offline", "offline"),
    ("failing", "failing"),
    ("lowdisk", "low disk"),
)


def status(as_json: JsonOpt = False) -> None:
    """The fleet at a glance: device health counts, store usage, events to look at.

    The console dashboard's counts (pending, online, offline, failing, low disk), the
    store's usage and deduplication ratio, and the events nobody acknowledged yet.
    """
    doc = Api.from_login().get("/status")
    if as_json:
        emit_json(doc)
        return
    counts = doc["counts"]
    typer.echo(
        f"devices  {doc['total']}: " + ", ".join(f"{counts.get(k, 0)} {word}" for k, word in COUNTS)
    )
    u = doc["usage"]
    if u:
        ratio = f"{u['reduction']:.1f}x" if u["pack_bytes"] else "-"
        typer.echo(
            f"store    {human_bytes(u['pack_bytes'])} in packs for "
            f"{human_bytes(u['logical_bytes'])} in {u['snapshots']} snapshots "
            f"(deduplication and compression {ratio}); "
            f"+{human_bytes(u['growth_7d'])} in 7 days"
        )
    ev = doc["events"]
    typer.echo(
        "events   "
        + ", ".join(f"{ev.get(s, 0)} {s}" for s in ("error", "warning", "info"))
        + " not acknowledged"
    )


@event_app.command("list")
def event_list(
    pending: Annotated[
        bool, typer.Option("--pending", help="Only events nobody acknowledged yet.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List events, newest first: time, severity, source, target, message, who acknowledged."""
    rows = Api.from_login().get("/events", params={"pending": pending, "limit": limit})
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["ID", "TIME", "SEVERITY", "SOURCE", "TARGET", "MESSAGE", "ACKNOWLEDGED BY"],
        (
            [
                e["id"],
                age(e["time"]),
                e["severity"],
                e["source"],
                e["target"],
                e["message"],
                e["acknowledged_by"],
            ]
            for e in rows
        ),
    )


EventIdArg = Annotated[int, typer.Argument(help="The event's number (from `lamina event list`).")]
events = ApiCommands(event_app, "/events", ("event_id", EventIdArg))
events.post(
    "ack",
    lambda d: f"event {d['id']} acknowledged by {d['acknowledged_by']}",
    "Acknowledge an event: it stops counting on the dashboard and in `lamina status`.",
)
