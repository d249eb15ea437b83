"""``lamina cvd``: centralize, list, show, snapshots, browse, sync, restore, revert, archive, migrate."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli.api_commands import ApiCommands
from lamina.cli.client import Api
from lamina.cli.common import (
    CvdArg,
    DeviceArg,
    JsonOpt,
    SameOwnerOpt,
    SpecialFilesOpt,
    emit,
    emit_rows,
)
from lamina.cli.fleet import StateFilterOpt, fleet_rows, health_of
from lamina.cli.output import age, emit_json, human_bytes, print_table
from lamina.cli.progress import byte_progress, exit_with_warnings
from lamina.cli.remote_blobs import WORKER_MODULES, remote_blobs, worker_blobs
from lamina.errors import IntegrityError
from lamina.tree.restore import restore_tree
from lamina.tree.restore_procs import REMOTE_JOB_BYTES, processes_for
from lamina.tree.restore_types import Opener

#: The snapshot a command reads (``latest`` when not given).
SnapshotOpt = Annotated[str, typer.Option(help="Snapshot id or 'latest'.")]
#: ``--dry-run`` of the commands that validate before they queue a task.
ValidateOpt = Annotated[
    bool, typer.Option("--dry-run", help="Validate and report; change nothing.")
]

app = typer.Typer(help="CVDs: the central copy of each endpoint.", no_args_is_help=True)


def id_key_of(download: dict[str, Any]) -> bytes | None:
    """The id key a restore as download carries (hex), None from a version-3 server."""
    text = download.get("id_key")
    if text is None:
        return None
    try:
        key = bytes.fromhex(text) if isinstance(text, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise IntegrityError("the server sent an id key that is not 32 bytes in hex")
    return key


def _cvd_line(c: dict[str, Any]) -> str:
    return (
        f"{c['id']}  {c['name']:<24} {c['state']:<9} policy {c['policy']} v{c['policy_version']}"
        f"{' reference' if c['reference'] else ''}  {c['snapshots']} snapshots  last sync {c['last_sync'] or 'never'}"
    )


@app.command()
def centralize(
    device: Annotated[str, typer.Argument(help="Device id or hostname.")],
    policy: Annotated[str, typer.Option(help="CVD policy name.")],
    reference: Annotated[
        bool, typer.Option("--reference", help="A reference CVD (for capturing layers).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="CVD name (default: the hostname).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the CVD of a pending device; its agent then uploads it whole."""
    doc = Api.from_login().post(
        f"/devices/{device}/centralize", {"policy": policy, "reference": reference, "name": name}
    )
    emit(doc, as_json, _cvd_line(doc))


@app.command("list")
def list_(
    state: StateFilterOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List CVDs: name, hostname, state, policy, last sync, snapshots, layers, agent version.

    Example: lamina cvd list --state offline
    """
    api = Api.from_login()
    rows = api.get("/cvds")
    fleet = {r["cvd_id"]: r for r in fleet_rows(api, state) if r["cvd_id"]}
    if state is not None:
        rows = [c for c in rows if c["id"] in fleet]
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["ID", "NAME", "HOSTNAME", "STATE", "POLICY", "LAST SYNC", "SNAPSHOTS", "LAYERS", "AGENT"],
        (
            [
                c["id"][:8],
                c["name"] + (" (reference)" if c["reference"] else ""),
                fleet[c["id"]]["name"] if c["id"] in fleet else c["hostname"],
                health_of(fleet[c["id"]]) if c["id"] in fleet else c["state"],
                f"{c['policy']} v{c['policy_version']}",
                age(c["last_sync"]),
                c["snapshots"],
                " + ".join(fleet[c["id"]]["layers"]) if c["id"] in fleet else "",
                fleet[c["id"]]["agent_version"] if c["id"] in fleet else "",
            ]
            for c in rows
        ),
    )


def progress_text(p: dict[str, Any]) -> str:
    """An agent's upload progress as a person reads it: phase, percent, files, bytes."""
    parts = [str(p.get("phase") or "syncing")]
    if isinstance(p.get("percent"), int):
        parts.append(f"{p['percent']}%")
    files, total_files = p.get("files"), p.get("total_files")
    if isinstance(files, int):
        parts.append(f"{files} of {total_files} files" if total_files else f"{files} files")
    scanned, total = p.get("bytes"), p.get("total_bytes")
    if isinstance(scanned, int):
        parts.append(
            f"{human_bytes(scanned)} of {human_bytes(total)} read"
            if isinstance(total, int) and total
            else f"{human_bytes(scanned)} read"
        )
    if isinstance(p.get("uploaded"), int):
        parts.append(f"{human_bytes(p['uploaded'])} uploaded")
    return ", ".join(parts)


def _cvd_text(doc: dict[str, Any]) -> str:
    progress = f"\n  progress: {progress_text(doc['progress'])}" if doc["progress"] else ""
    return _cvd_line(doc) + progress


def _layers_text(doc: dict[str, Any]) -> str:
    return (
        f"assigned: {' + '.join(doc['assigned']) or '-'}\n"
        f"running:  {' + '.join(doc['running']) or '-'}"
    )


cvds = ApiCommands(app, "/cvds", ("cvd", CvdArg))
cvds.show(_cvd_text, "Show a CVD, with the progress of a running upload.")
cvds.call(
    "layers",
    "GET",
    "/layers",
    _layers_text,
    "The layers a CVD is assigned, and the ones its endpoint runs.",
)


@app.command()
def snapshots(cvd: CvdArg, as_json: JsonOpt = False) -> None:
    """A CVD's snapshots, oldest first."""
    emit_rows(
        Api.from_login().get(f"/cvds/{cvd}/snapshots"),
        as_json,
        lambda s: f"{s['id'][:12]}  {s['time']}  {s['files']:>8} files  {human_bytes(s['bytes'])}",
    )


@app.command()
def ls(
    cvd: CvdArg,
    snapshot: SnapshotOpt = "latest",
    path: Annotated[str, typer.Argument(help="Folder inside the snapshot.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Browse a folder of a snapshot (read-only)."""
    emit_rows(
        Api.from_login().get(f"/cvds/{cvd}/snapshots/{snapshot}/browse", params={"path": path}),
        as_json,
        lambda r: f"{r['type']:<8} {oct(r['mode']):>7} {r['size']:>12}  {r['name']}",
    )


cvds.post(
    "sync",
    lambda t: f"task {t['id']}: sync queued for the agent",
    "Ask the CVD's agent to upload now (a task; see `lamina task watch`).",
)


@app.command()
def restore(
    cvd: CvdArg,
    snapshot: Annotated[
        str, typer.Option(help="Snapshot id (or unique prefix) or 'latest'.")
    ] = "latest",
    path: Annotated[
        list[str] | None, typer.Option("--path", help="Path inside the snapshot (repeatable).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Download into this folder.")
    ] = None,
    to_endpoint: Annotated[
        bool, typer.Option("--to-endpoint", help="Have the agent restore in place.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="With --to-endpoint: replace current files instead of keeping them as NAME.lamina-TIME.",
        ),
    ] = False,
    special_files: SpecialFilesOpt = False,
    same_owner: SameOwnerOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore files or folders of a snapshot: download them, or restore them on the endpoint."""
    api = Api.from_login()
    if to_endpoint == (output is not None):
        raise typer.BadParameter("give exactly one of --output DIR and --to-endpoint")
    if to_endpoint and (special_files or same_owner):
        raise typer.BadParameter("--special-files and --same-owner apply to --output only")
    if to_endpoint:
        t = api.post(
            f"/cvds/{cvd}/restore",
            {"snapshot": snapshot, "paths": path or [], "overwrite": overwrite},
        )
        emit(t, as_json, f"task {t['id']}: restore queued for the agent")
        return
    assert output is not None
    # Needs "data.read"; the server writes the download to its audit log.
    snap = api.post(f"/cvds/{cvd}/snapshots/{snapshot}/download", {"paths": path or []})
    with byte_progress("restoring", total=None if path else snap["bytes"]) as advance:
        id_key = id_key_of(snap)
        st = restore_tree(
            remote_blobs(api, id_key),
            bytes.fromhex(snap["root"]),
            output,
            paths=path or [],
            progress=advance,
            special_files=special_files,
            same_owner=same_owner,
            processes=processes_for(snap["files"], snap["bytes"]),
            opener=Opener(
                functools.partial(worker_blobs, api.url, api.token, id_key),
                WORKER_MODULES,
                job_bytes=REMOTE_JOB_BYTES,
            ),
        )
    doc = {
        "id": snap["id"],
        "files": st.files,
        "dirs": st.dirs,
        "bytes": st.bytes,
        "errors": st.errors,
    }
    if as_json:
        emit_json(doc)
    else:
        typer.echo(
            f"restored {st.files} files, {human_bytes(st.bytes)} from snapshot {snap['id'][:12]} into {output}"
        )
    exit_with_warnings(len(st.errors), "restore errors")


@app.command()
def revert(
    cvd: CvdArg,
    snapshot: SnapshotOpt,
    system_only: Annotated[
        bool,
        typer.Option(
            "--system-only/--everything",
            help="Keep the user-data area as it is now (default), or revert everything.",
        ),
    ] = True,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="List what the revert would add, update and remove; change nothing."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Revert the endpoint to a snapshot, applied atomically at its next boot."""
    t = Api.from_login().post(
        f"/cvds/{cvd}/revert",
        {"snapshot": snapshot, "system_only": system_only, "dry_run": dry_run},
    )
    if as_json:
        emit_json(t)
    elif dry_run:
        typer.echo(
            f"task {t['id']}: revert dry run queued; the agent plans it against the endpoint "
            f"(`lamina task show {t['id']}` lists what would be added, updated and removed)"
        )
    else:
        typer.echo(
            f"task {t['id']}: revert queued; the agent stages it and applies it at next boot"
        )


cvds.post("archive", _cvd_line, "Detach the device and keep the CVD read-only with its snapshots.")


def _migration_text(r: dict[str, Any]) -> str:
    head = (
        f"{r['status']}: CVD {r['cvd']} onto {r['device']} ({r['mode']}, snapshot {r['snapshot']})"
    )
    free = human_bytes(r["disk_free"]) if r.get("disk_free") is not None else "unknown"
    lines = [
        head + (f", task {r['task']}" if r.get("task") else ""),
        f"  space needed {human_bytes(r['space_needed'])}, free {free}",
        f"  kept from the new machine: {len(r['kept_from_new_machine'])} paths",
    ]
    if r.get("layers"):
        lines.append(f"  layers: {' + '.join(r['layers'])}")
    lines += [f"  network: {line}" for line in r.get("network") or []]
    for k in ("blocking", "warnings"):
        lines += [f"  {k[:-1] if k.endswith('s') else k}: {line}" for line in r.get(k) or []]
    return "\n".join(lines)


@app.command()
def migrate(
    cvd: CvdArg,
    to: Annotated[str, typer.Option("--to", help="The replacement device (pending).")],
    mode: Annotated[
        str, typer.Option(help="full | apps-data | data: what the new machine takes over.")
    ] = "full",
    base: Annotated[
        str | None, typer.Option(help="Base layer NAME[:VERSION] (apps-data mode).")
    ] = None,
    keep_base: Annotated[
        bool, typer.Option("--keep-base", help="Keep the CVD's base layer (the default).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="A new name for the CVD.")] = None,
    keep_name: Annotated[
        bool, typer.Option("--keep-name", help="Keep the CVD's name (the default).")
    ] = False,
    snapshot: SnapshotOpt = "latest",
    dry_run: ValidateOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Migrate a CVD onto a replacement device: validate, then download, stage, reboot."""
    if name and keep_name:
        raise typer.BadParameter("give either --name or --keep-name, not both")
    r = Api.from_login().post(
        f"/cvds/{cvd}/migrate",
        {
            "to": to,
            "mode": mode,
            "base": base,
            "keep_base": keep_base,
            "name": name,
            "snapshot": snapshot,
            "dry_run": dry_run,
        },
    )
    emit(r, as_json, _migration_text(r))


@app.command("restore-system")
def restore_system(
    cvd: CvdArg,
    to: Annotated[str, typer.Option("--to", help="The repaired device (enrolled again).")],
    snapshot: SnapshotOpt = "latest",
    dry_run: ValidateOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a CVD's whole system onto its repaired machine (as `migrate --mode full`)."""
    r = Api.from_login().post(
        f"/cvds/{cvd}/restore-system", {"to": to, "snapshot": snapshot, "dry_run": dry_run}
    )
    emit(r, as_json, _migration_text(r))


@app.command()
def provision(
    device: DeviceArg,
    base: Annotated[str, typer.Option(help="Base layer NAME[:VERSION].")],
    policy: Annotated[str, typer.Option(help="The new CVD's upload policy.")],
    app_layer: Annotated[
        list[str] | None, typer.Option("--app", help="App layer NAME[:VERSION] (repeat).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The new CVD's name.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report the layers and packs; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Provision a pending machine: its system becomes the base layer (and apps), plus its driver packs."""
    r = Api.from_login().post(
        f"/devices/{device}/provision",
        {"base": base, "apps": app_layer or [], "policy": policy, "name": name, "dry_run": dry_run},
    )
    if as_json:
        emit_json(r)
        return
    typer.echo(f"{r['status']}: {r['device']} from {', '.join(r['layers'])}")
    typer.echo(f"  driver packs: {', '.join(r['driver_packs']) or 'none'}")
    if r.get("task"):
        typer.echo(f"  task {r['task']}: restart the machine once it says waiting")


@app.command("migrate-os")
def migrate_os(
    cvd: CvdArg,
    base: Annotated[str, typer.Option(help="A base layer NAME[:VERSION] of the new OS release.")],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List what does not fit the new release; change nothing."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Move an endpoint to another OS release, keeping its identity, user data and settings."""
    r = Api.from_login().post(f"/cvds/{cvd}/migrate-os", {"base": base, "dry_run": dry_run})
    if as_json:
        emit_json(r)
        return
    typer.echo(f"{r['status']}: {r['cvd']} onto {r['base']} ({r['os']})")
    for label in r["app_layers_not_fitting"]:
        typer.echo(f"  app layer without a version for {r['os']}: {label}")
    for pkg, ver in sorted(r["packages_not_carried"].items()):
        typer.echo(f"  user-installed package not carried: {pkg} {ver}")
