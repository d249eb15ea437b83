"""``lamina layer``: capture, record, list, show, assign (dry run), enforce."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli.api_commands import ApiCommands
from lamina.cli.client import Api
from lamina.cli.common import CvdArg, DeviceArg, JsonOpt, emit, emit_rows, option_group
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


def _version(name: str | None, update: str | None, notes: str) -> dict[str, Any]:
    return {"name": name, "update": update, "notes": notes}


#: Which layer a capture makes a version of, and its notes: given as ``version``.
version_options = option_group(
    "version",
    [("name", NameOpt, None), ("update", UpdateOpt, None), ("notes", NotesOpt, "")],
    _version,
)


def _layer_text(doc: dict[str, Any]) -> str:
    vs = doc["versions"]
    lines = [
        f"{doc['id']}  {doc['name']:<20} {doc['kind']:<4}  versions {', '.join(str(v['version']) for v in vs)}"
    ]
    for v in vs:
        apps = v["apps"] or {}
        lines.append(
            f"    v{v['version']}  {v['created']}  {v['files']} files  {human_bytes(v['bytes'])}"
            f"  {len(v['whiteouts'])} whiteouts  packages: {', '.join(sorted(apps.get('packages', {}))) or '-'}"
        )
    return "\n".join(lines)


@app.command()
@version_options
def capture(
    cvd: Annotated[str, typer.Argument(help="Reference CVD (or its device).")],
    version: dict[str, Any],
    as_json: JsonOpt = False,
) -> None:
    """Capture a base layer from a reference CVD's latest snapshot (system + applications)."""
    doc = Api.from_login().post("/layers/capture", {"cvd": cvd, **version})
    emit(doc, as_json, _layer_text(doc))


@record_app.command("start")
def record_start(device: DeviceArg, as_json: JsonOpt = False) -> None:
    """Snapshot the reference endpoint and start recording what an install changes."""
    doc = Api.from_login().post("/layers/record/start", {"device": device})
    emit(
        doc,
        as_json,
        f"recording on {doc['cvd']}: the agent takes the first snapshot (task {doc['task']})",
    )


@record_app.command("finalize")
@version_options
def record_finalize(
    device: DeviceArg,
    version: dict[str, Any],
    as_json: JsonOpt = False,
) -> None:
    """Snapshot again and capture the difference as an app layer version."""
    doc = Api.from_login().post("/layers/record/finalize", {"device": device, **version})
    emit(
        doc,
        as_json,
        f"finalizing on {doc['cvd']}: the layer is captured at the agent's next snapshot (task {doc['task']})",
    )


@record_app.command("cancel")
def record_cancel(device: DeviceArg, as_json: JsonOpt = False) -> None:
    """Stop a recording without capturing anything (its start snapshot is released)."""
    doc = Api.from_login().post("/layers/record/cancel", {"device": device})
    emit(doc, as_json, f"recording on {doc['cvd']} cancelled")


LayerArg = Annotated[str, typer.Argument(help="Layer name or id.")]
layers = ApiCommands(app, "/layers", ("layer", LayerArg))
layers.list(_layer_text, "List layers and their versions.")
layers.show(_layer_text, "Show a layer: versions, applications, whiteouts.")


def _plan_text(p: dict[str, Any]) -> str:
    lines = [
        f"{p['cvd']}: {p['status']} {' + '.join(p['layers'])}: "
        + ", ".join(f"{n} {a}" for a, n in sorted(p["counts"].items()))
        + f"; download {human_bytes(p['download_bytes'])}, staging space {human_bytes(p['space_needed'])}"
    ]
    if p.get("packs"):
        lines.append(f"  driver packs: {', '.join(safe(x) for x in p['packs'])}")
    lines += [f"  warning: {safe(w)}" for w in p.get("warnings") or []]
    lines += [f"  refused: {r}" for r in p["refused"]]
    lines += [
        f"  {it['action']:<15} {it['path']}  {it['detail']}"
        for it in p["items"]
        if it["action"] not in ("added", "updated", "removed")
    ]
    return "\n".join(lines)


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
    emit_rows(plans, as_json, _plan_text)
    refused = [p["cvd"] for p in plans if p["status"] == "refused"]
    if refused:
        raise ConflictError(f"assignment refused for {', '.join(refused)} (see the report)")


@app.command("rules-test")
def rules_test(
    cvd: CvdArg,
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
    cvd: CvdArg,
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
    emit(p, as_json, _plan_text(p))
