"""``lamina collection``: named groups of CVDs, static or by a filter on device facts."""

from __future__ import annotations

from typing import Annotated

import typer

from lamina.cli.client import Api
from lamina.cli.common import JsonOpt, emit
from lamina.cli.output import emit_json

app = typer.Typer(
    help="Collections of CVDs, static or by a filter on device facts.", no_args_is_help=True
)


@app.command("create")
def collection_create(
    name: Annotated[str, typer.Argument(help="Collection name.")],
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
    emit(doc, as_json, f"collection {doc['name']}: {', '.join(doc['members']) or 'no members yet'}")


@app.command("list")
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
