"""``lamina driver``: the driver library (packs and profiles)."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli.api_commands import ApiCommands
from lamina.cli.client import Api
from lamina.cli.common import JsonOpt, emit
from lamina.cli.output import emit_json, human_bytes, safe
from lamina.cli.progress import byte_progress
from lamina.errors import UsageError

app = typer.Typer(
    help="Driver library: packs of firmware, modules and .deb files; profiles that match hardware.",
    no_args_is_help=True,
)
profile_app = typer.Typer(
    help="Driver profiles: which packs go to which hardware.", no_args_is_help=True
)
app.add_typer(profile_app, name="profile")

PackOpt = Annotated[
    list[str] | None, typer.Option("--pack", help="A driver pack as NAME[:VERSION] (repeatable).")
]
MatchOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--match",
        help="FIELD=GLOB that must hold (repeatable, all must hold), e.g. sys_vendor=LENOVO, "
        "product_name=20BW*, modalias=pci:v000010ECd*.",
    ),
]
FamilyOpt = Annotated[
    str | None,
    typer.Option("--os-family", help="Only for systems of this OS family (debian, rhel)."),
]
PackArg = Annotated[str, typer.Argument(help="Driver pack name or id.", show_default=False)]
ProfileArg = Annotated[str, typer.Argument(help="Driver profile name.", show_default=False)]


def _pack_text(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['id']}  {safe(doc['name']):<24} versions {', '.join(str(v['version']) for v in doc['versions'])}"
    ]
    for v in doc["versions"]:
        pkgs = (
            ", ".join(f"{safe(k)} {safe(str(x))}" for k, x in sorted(v["packages"].items())) or "-"
        )
        lines.append(
            f"    v{v['version']}  {v['created']}  {v['files']} files  {human_bytes(v['bytes'])}"
            f"  packages: {pkgs}  {safe(v['notes'])}"
        )
    return "\n".join(lines)


def _chunks(path: Path, advance: Any) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while part := f.read(1 << 20):
            advance(0, len(part))
            yield part


@app.command("import")
def import_(
    name: Annotated[str, typer.Argument(help="The pack's name (a new version if it exists).")],
    path: Annotated[
        Path,
        typer.Argument(
            help="A folder laid out from the root (lib/firmware, etc/modprobe.d, lib/modules) "
            "and/or .deb files at its top."
        ),
    ],
    notes: Annotated[str, typer.Option(help="Notes kept with the version.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Import a new version of a driver pack from a folder."""
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder: give the pack's folder")
    api = Api.from_login()
    with tempfile.TemporaryDirectory(prefix="lamina-pack-") as tmp:
        archive = Path(tmp) / "pack.tar"
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as t:
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for n in [*dirs, *sorted(files)]:
                    full = Path(root) / n
                    t.add(full, arcname=str(full.relative_to(path)), recursive=False)
        with byte_progress(f"uploading {name}", archive.stat().st_size) as advance:
            doc = api.post(
                "/drivers/import",
                None,
                params={"name": name, "notes": notes},
                content=_chunks(archive, advance),
                headers={"Content-Type": "application/x-tar"},
            )
    if as_json:
        emit_json(doc)
    else:
        v = doc["versions"][-1]
        typer.echo(
            f"driver pack {safe(doc['name'])}:{v['version']}: {v['files']} files, {human_bytes(v['bytes'])}"
        )


def _deleted(what: str) -> Callable[[dict[str, Any]], str]:
    """The line of a delete command, from what the API answers (the deleted thing)."""
    return lambda doc: f"{what} {safe(doc['name'])} deleted"


packs = ApiCommands(app, "/drivers", ("pack", PackArg))
packs.list(_pack_text, "List driver packs and their versions.")
packs.show(_pack_text, "Show a driver pack: versions, packages, files.")
packs.call(
    "delete",
    "DELETE",
    "",
    _deleted("driver pack"),
    "Delete a driver pack (refused while a profile names it or an endpoint runs it).",
)


# --- profiles ---------------------------------------------------------------------------
def _profile_line(p: dict[str, Any]) -> str:
    return (
        f"{p['id']}  {safe(p['name']):<20} packs {', '.join(safe(x) for x in p['packs'])}"
        f"  when {' and '.join(safe(m) for m in p['matches'])}"
        + (f"  on {safe(p['os_family'])}" if p["os_family"] else "")
    )


@profile_app.command("create")
def profile_create(
    name: ProfileArg,
    pack: PackOpt = None,
    match: MatchOpt = None,
    os_family: FamilyOpt = None,
    notes: Annotated[str, typer.Option(help="Notes kept with the profile.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a driver profile: these packs for hardware where every match holds."""
    doc = Api.from_login().post(
        "/driver-profiles",
        {
            "name": name,
            "packs": pack or [],
            "matches": match or [],
            "os_family": os_family,
            "notes": notes,
        },
    )
    emit(doc, as_json, _profile_line(doc))


@profile_app.command("update")
def profile_update(
    name: ProfileArg,
    pack: PackOpt = None,
    match: MatchOpt = None,
    os_family: Annotated[
        str | None, typer.Option("--os-family", help='OS family; "" for any.')
    ] = None,
    notes: Annotated[str | None, typer.Option(help="New notes.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace a profile's packs, matches or OS family (what is given)."""
    doc = Api.from_login().put(
        f"/driver-profiles/{name}",
        {"packs": pack or None, "matches": match or None, "os_family": os_family, "notes": notes},
    )
    emit(doc, as_json, _profile_line(doc))


profiles = ApiCommands(profile_app, "/driver-profiles", ("name", ProfileArg))
profiles.list(_profile_line, "List driver profiles.")
profiles.show(_profile_line, "Show a driver profile.")
profiles.call("delete", "DELETE", "", _deleted("driver profile"), "Delete a driver profile.")


def _matching_text(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        [*(f"{r['id']}  {safe(r['hostname'])}" for r in rows), f"{len(rows)} device(s) match"]
    )


profiles.call(
    "test",
    "GET",
    "/devices",
    _matching_text,
    "The devices a profile matches today (by the facts they reported).",
)
