"""``lamina store``: initialise, check, collect garbage, rebuild the index, count."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
import time
from contextlib import closing
from typing import Annotated

import typer

from lamina.cli.common import JsonOpt, owner_only, parse_duration
from lamina.cli.output import emit_json, human_bytes
from lamina.cli.progress import err_console, step_progress
from lamina.cli.store_options import (
    open_store,
    server_libraries,
    store_command,
)
from lamina.db.location import StoreLocation
from lamina.errors import IntegrityError, UsageError
from lamina.store.check import check as check_store
from lamina.store.gc import Owners, collect
from lamina.store.keys import PASSPHRASE_ENV
from lamina.store.rebuild import rebuild_index
from lamina.store.repository import Store
from lamina.store.roots import RootSource
from lamina.tree.model import references

app = typer.Typer(
    help="The deduplicated store: init, check, gc, rebuild-index, stats.", no_args_is_help=True
)


def _roots(s: Store) -> list[RootSource]:
    """Every root of the store: snapshots, layer versions, tasks' trees (the database's)."""
    from lamina.db.roots import all_roots  # the server extra; open_store found it

    return all_roots(s)


def _forget_strays(s: Store, dry_run: bool) -> str:
    """Forget the flex snapshots no image names (``db.roots.forget_stray_flex``); the
    gc's note on it, or nothing."""
    from lamina.db.roots import STRAYS, forget_stray_flex

    n = forget_stray_flex(s, dry_run)
    return f"{'would forget' if dry_run else 'forgot'} {n} {STRAYS}" if n else ""


def _owners(s: Store) -> Owners:
    """The CVDs' ownership rows, which the gc takes back with what it condemns."""
    from lamina.db.roots import owners

    return owners(s)


@app.command()
@store_command
def init(
    loc: StoreLocation,
    passphrase_stdin: Annotated[
        bool,
        typer.Option(
            "--passphrase-stdin",
            help=f"Seal the key file with a passphrase read from stdin (or set {PASSPHRASE_ENV}).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a store: its key file, database schema and config object."""
    passphrase = (
        sys.stdin.readline().rstrip("\n") if passphrase_stdin else os.environ.get(PASSPHRASE_ENV)
    )
    if passphrase_stdin and not passphrase:
        raise UsageError("--passphrase-stdin given but stdin held no passphrase")
    with owner_only(loc.data):
        s = server_libraries().init_store(loc, passphrase or None)
    doc = {
        "id": s.keys.store_id,
        "keyfile": str(loc.keys_path),
        "database": loc.database.split("@")[-1],
        "store": s.backend.url,
        "sealed": bool(passphrase),
    }
    s.close()
    if as_json:
        emit_json(doc)
        return
    typer.echo(f"store {doc['id']} ready at {doc['store']}")
    err_console.print(
        f"[yellow]Back up the key file {loc.keys_path}: without it the data cannot be read.[/yellow]"
    )


@app.command()
@store_command
def check(
    loc: StoreLocation,
    read_data: Annotated[
        bool, typer.Option("--read-data", help="Also read, decrypt and re-hash every blob.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify the store's structure (and, with --read-data, every byte)."""
    with closing(open_store(loc)) as s, step_progress("checking") as update:
        rep = check_store(s, _roots(s), references, read_data=read_data, progress=update)
    if as_json:
        emit_json({"id": "check", "ok": rep.ok, **dataclasses.asdict(rep)})
    else:
        for w in rep.warnings:
            err_console.print(f"[yellow]warning:[/yellow] {w}")
        for e in rep.errors:
            err_console.print(f"[red]damaged:[/red] {e}")
        typer.echo(
            f"{rep.packs} packs, {rep.blobs} blobs, {rep.trees} trees, {rep.roots} roots checked"
            + (f", {human_bytes(rep.bytes_read)} read" if read_data else "")
            + (": no errors" if rep.ok else f": {len(rep.errors)} errors")
        )
    if not rep.ok:
        raise typer.Exit(IntegrityError.exit_code)


@app.command()
@store_command
def gc(
    loc: StoreLocation,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be removed; change nothing.")
    ] = False,
    orphan_grace: Annotated[
        str, typer.Option(help="Remove packs left by interrupted writes once older than this.")
    ] = "1h",
    as_json: JsonOpt = False,
) -> None:
    """Remove what no snapshot needs; repack sparse packs. Safe while backups run."""
    with closing(open_store(loc)) as s:
        started = time.monotonic()
        strays = _forget_strays(s, dry_run)
        with step_progress("gc") as update:
            rep = collect(
                s,
                _roots(s),
                references,
                orphan_grace=dt.timedelta(seconds=parse_duration(orphan_grace)),
                dry_run=dry_run,
                progress=update,
                owners=_owners(s),
            )
        if strays:
            rep.notes.append(strays)
        if not dry_run:
            server_libraries().record_gc(s, time.monotonic() - started, rep.bytes_freed)
    if as_json:
        emit_json({"id": "gc", **dataclasses.asdict(rep)})
        return
    verb = "would remove" if dry_run else "removed"
    if dry_run:
        for r in rep.repack:
            typer.echo(
                f"would repack pack {r.pack[:16]} ({r.reason}): "
                f"{human_bytes(r.size)}, {human_bytes(r.live_bytes)} live"
            )
    typer.echo(
        f"{rep.reachable} blobs reachable; {verb} {rep.condemned} blobs; "
        f"{rep.packs_deleted} packs deleted, {rep.packs_repacked} repacked, "
        f"{rep.orphans_deleted} orphan packs deleted; {human_bytes(rep.bytes_freed)} freed; "
        f"{rep.owner_rows} ownership records {'to take' if dry_run else 'taken'} back"
    )
    for note in rep.notes:
        typer.echo(note)


@app.command("rebuild-index")
@store_command
def rebuild(
    loc: StoreLocation,
    as_json: JsonOpt = False,
) -> None:
    """Recreate the chunk index and the snapshot list from the pack files alone."""
    with closing(open_store(loc)) as s, step_progress("rebuilding") as update:
        rep = rebuild_index(s, references, progress=update)
    if as_json:
        emit_json({"id": "rebuild-index", **dataclasses.asdict(rep)})
        return
    for m in rep.skipped:
        err_console.print(f"[yellow]skipped:[/yellow] {m}")
    typer.echo(
        f"index rebuilt: {rep.packs} packs, {rep.blobs} blobs; "
        f"{rep.snapshots_recovered} snapshots recovered"
    )


@app.command()
@store_command
def stats(
    loc: StoreLocation,
    as_json: JsonOpt = False,
) -> None:
    """Count packs, blobs and bytes (raw and as stored)."""
    with closing(open_store(loc)) as s:
        st = s.stats()
        store_id = s.keys.store_id
    if as_json:
        emit_json({"id": store_id, **dataclasses.asdict(st)})
        return
    ratio = st.raw_bytes / st.stored_bytes if st.stored_bytes else 0.0
    typer.echo(
        f"store {store_id}\n"
        f"  snapshots   {st.snapshots}\n"
        f"  packs       {st.packs} ({human_bytes(st.pack_bytes)}); "
        f"{st.small_packs} small (under half of {human_bytes(st.pack_size)}), "
        f"{st.sparse_packs} sparse (mostly condemned)\n"
        f"  blobs       {st.blobs} ({st.data_blobs} data, {st.tree_blobs} trees)\n"
        f"  raw bytes   {human_bytes(st.raw_bytes)}\n"
        f"  stored      {human_bytes(st.stored_bytes)} (compression {ratio:.2f}x)\n"
        f"  pack sizes"
    )
    for b in st.pack_histogram:
        lo, hi = b["min"] or 0, b["max"]
        span = (
            f"{human_bytes(lo)} - {human_bytes(hi)}" if hi is not None else f">= {human_bytes(lo)}"
        )
        typer.echo(f"    {span:<24} {b['packs']:>7} packs  {human_bytes(b['bytes'] or 0)}")
