"""``lamina layer``: capture, record, list, show, assign (dry run), enforce."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli.client import Api
from lamina.cli.common import JsonOpt
from lamina.cli.output import emit_json, human_bytes, safe
from lamina.errors import ConflictError

app = typer.Typer(
    help="Base and app layers: capture, record, assign, enforce.", no_args_is_help=True
)
record_app = typer.Typer(help="Record an app layer on a reference endpoint.", no_args_is_help=True)
app.add_typer(record_app, name="record")

NameOpt = Annotated[str | None, typer.Option(help="Name of a new layer.")]
UpdateOpt = Annotated[str | None, typer.Option("--update", help="Add a new version to this layer.")]
NotesOpt = Annotated[str, typer.Option(help="Notes kept with the version.")]


def _print_layer(doc: dict[str, Any]) -> None:
    vs = doc["versions"]
    typer.echo(
        f"{doc['id']}  {doc['name']:<20} {doc['kind']:<4}  versions {', '.join(str(v['version']) for v in vs)}"
    )
    for v in vs:
        apps = v["apps"] or {}
        typer.echo(
            f"    v{v['version']}  {v['created']}  {v['files']} files  {human_bytes(v['bytes'])}"
            f"  {len(v['whiteouts'])} whiteouts  packages: {', '.join(sorted(apps.get('packages', {}))) or '-'}"
        )


@app.command()
def capture(
    cvd: Annotated[str, typer.Argument(help="Reference CVD (or its device).")],
    name: NameOpt = None,
    update: UpdateOpt = None,
    notes: NotesOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Capture a base layer from a reference CVD's latest snapshot (system + applications)."""
    doc = Api.from_login().post(
        "/layers/capture", {"cvd": cvd, "name": name, "update": update, "notes": notes}
    )
    emit_json(doc) if as_json else _print_layer(doc)


@record_app.command("start")
def record_start(device: str, as_json: JsonOpt = False) -> None:
    """Snapshot the reference endpoint and start recording what an install changes."""
    doc = Api.from_login().post("/layers/record/start", {"device": device})
    emit_json(doc) if as_json else typer.echo(
        f"recording on {doc['cvd']}: the agent takes the first snapshot (task {doc['task']})"
    )


@record_app.command("finalize")
def record_finalize(
    device: str,
    name: NameOpt = None,
    update: UpdateOpt = None,
    notes: NotesOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Snapshot again and capture the difference as an app layer version."""
    doc = Api.from_login().post(
        "/layers/record/finalize",
        {"device": device, "name": name, "update": update, "notes": notes},
    )
    emit_json(doc) if as_json else typer.echo(
        f"finalizing on {doc['cvd']}: the layer is captured at the agent's next snapshot (task {doc['task']})"
    )


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """List layers and their versions."""
    rows = Api.from_login().get("/layers")
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        _print_layer(r)


@app.command()
def show(layer: str, as_json: JsonOpt = False) -> None:
    """Show a layer: versions, applications, whiteouts."""
    doc = Api.from_login().get(f"/layers/{layer}")
    emit_json(doc) if as_json else _print_layer(doc)


def _print_plan(p: dict[str, Any]) -> None:
    typer.echo(
        f"{p['cvd']}: {p['status']} {' + '.join(p['layers'])}: "
        + ", ".join(f"{n} {a}" for a, n in sorted(p["counts"].items()))
        + f"; download {human_bytes(p['download_bytes'])}, staging space {human_bytes(p['space_needed'])}"
    )
    if p.get("packs"):
        typer.echo(f"  driver packs: {', '.join(safe(x) for x in p['packs'])}")
    for w in p.get("warnings") or []:
        typer.echo(f"  warning: {safe(w)}")
    for r in p["refused"]:
        typer.echo(f"  refused: {r}")
    for it in p["items"]:
        if it["action"] not in ("added", "updated", "removed"):
            typer.echo(f"  {it['action']:<15} {it['path']}  {it['detail']}")


@app.command()
def assign(
    cvds: Annotated[list[str] | None, typer.Argument(help="CVDs to assign.")] = None,
    collection: Annotated[
        str | None, typer.Option(help="Also every CVD of this collection.")
    ] = None,
    base: Annotated[str | None, typer.Option(help="Base layer as NAME[:VERSION].")] = None,
    app_: Annotated[
        list[str] | None,
        typer.Option("--app", help="App layer as NAME[:VERSION] (repeatable, in order)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would change.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Assign layers to CVDs; the agents stage them and apply them at next boot."""
    plans = Api.from_login().post(
        "/layers/assign",
        {
            "cvds": cvds or [],
            "collection": collection,
            "base": base,
            "apps": app_ or [],
            "dry_run": dry_run,
        },
    )
    if as_json:
        emit_json(plans)
    else:
        for p in plans:
            _print_plan(p)
    refused = [p["cvd"] for p in plans if p["status"] == "refused"]
    if refused:
        raise ConflictError(f"assignment refused for {', '.join(refused)} (see the report)")


@app.command("rules-test")
def rules_test(
    cvd: str,
    rules: Annotated[
        Path | None, typer.Option(help="A rule set file (JSON); default: the built-in one.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """What a rule set would keep in and drop from a layer captured from a CVD now."""
    doc = Api.from_login().post(
        "/layers/rules/test", {"cvd": cvd, "rules": rules.read_text() if rules else None}
    )
    if as_json:
        emit_json(doc)
        return
    typer.echo(
        f"{doc['cvd']} with rules {doc['rules']}: keeps {doc['kept']} files ({human_bytes(doc['kept_bytes'])}), drops {doc['dropped']}"
    )
    for reason, n in sorted(doc["dropped_by_reason"].items()):
        typer.echo(f"  {reason:<18} {n:>7}  e.g. {', '.join(doc['examples'].get(reason, [])[:3])}")
    hb = doc.get("hardware_bound") or {}
    if hb:
        shown = ", ".join(hb.get("examples", [])[:3])
        typer.echo(
            f"  migration keeps from the new machine: {hb.get('count', 0)} files, e.g. {shown}"
        )


@app.command()
def enforce(
    cvd: str,
    remove_user_apps: Annotated[
        bool,
        typer.Option(
            "--remove-user-apps", help="Also remove software installed outside the layers."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Bring an endpoint back to its assigned layers."""
    p = Api.from_login().post(f"/cvds/{cvd}/enforce", params={"remove_user_apps": remove_user_apps})
    emit_json(p) if as_json else _print_plan(p)


collection_app = typer.Typer(
    help="Collections of CVDs, static or by a filter on device facts.", no_args_is_help=True
)


@collection_app.command("create")
def collection_create(
    name: str,
    filter_: Annotated[
        str, typer.Option("--filter", help="e.g. os_release.ID=debian,vendor=Dell*")
    ] = "",
    cvd: Annotated[
        list[str] | None, typer.Option("--cvd", help="A static member (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a collection."""
    doc = Api.from_login().post(
        "/collections", {"name": name, "filter": filter_, "cvds": cvd or []}
    )
    emit_json(doc) if as_json else typer.echo(
        f"collection {doc['name']}: {', '.join(doc['members']) or 'no members yet'}"
    )


@collection_app.command("list")
def collection_list(as_json: JsonOpt = False) -> None:
    """List collections with their current members."""
    rows = Api.from_login().get("/collections")
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        typer.echo(
            f"{r['name']:<20} filter {r['filter'] or '-'}  members: {', '.join(r['members']) or '-'}"
        )
