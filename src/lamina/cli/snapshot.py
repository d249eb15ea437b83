"""``lamina snapshot``: back up a folder into the store, list, browse, diff, restore, forget."""

from __future__ import annotations

import functools
import os
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer

from lamina.cli.common import JsonOpt, SameOwnerOpt, SpecialFilesOpt, emit_rows
from lamina.cli.output import emit_json, human_bytes
from lamina.cli.progress import byte_progress, err_console, exit_with_warnings
from lamina.cli.snapshot_create import create_snapshot
from lamina.cli.snapshot_list import list_snapshots
from lamina.cli.store_options import ForceOpt, open_store, store_command
from lamina.db.location import StoreLocation
from lamina.errors import NotFoundError
from lamina.tree.diff import diff_trees
from lamina.tree.model import decode_tree
from lamina.tree.names import split_path
from lamina.tree.paths import lookup
from lamina.tree.restore import restore_tree
from lamina.tree.restore_procs import processes_for
from lamina.tree.restore_types import Opener

app = typer.Typer(
    help="Snapshots of folders in the store: create, list, ls, diff, restore, forget.",
    no_args_is_help=True,
)


@app.command()
@store_command
def create(
    path: Annotated[Path, typer.Argument(help="The folder to back up.")],
    source: Annotated[
        str | None, typer.Option(help="Name of the source (default HOST:PATH).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Glob of paths to skip (repeatable).")
    ] = None,
    *,
    loc: StoreLocation,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Back up a folder into a new snapshot; unchanged files are not read again."""
    create_snapshot(loc, path, source, exclude or [], force=force, as_json=as_json)


@app.command("list")
@store_command
def list_(
    source: Annotated[str | None, typer.Option(help="Only snapshots of this source.")] = None,
    *,
    loc: StoreLocation,
    as_json: JsonOpt = False,
) -> None:
    """List snapshots, oldest first."""
    list_snapshots(loc, source, as_json)


@app.command()
@store_command
def ls(
    snapshot: Annotated[str, typer.Argument(help="Snapshot id, unique prefix, or 'latest'.")],
    path: Annotated[str, typer.Argument(help="Folder inside the snapshot.")] = "",
    *,
    loc: StoreLocation,
    as_json: JsonOpt = False,
) -> None:
    """List a folder of a snapshot (read-only browsing)."""
    with closing(open_store(loc)) as s:
        snap = s.catalog.find_snapshot(snapshot)
        tree: bytes | None = snap.root
        if parts := split_path(path):
            found = lookup(s.get, snap.root, parts)
            tree = found.subtree if found is not None else None
        if tree is None:
            raise NotFoundError(f"{path} is not a folder in snapshot {snap.id[:12]}")
        entries = decode_tree(s.get(tree))
    rows = [
        {
            "id": os.fsdecode(e.name),
            "name": os.fsdecode(e.name),
            "type": e.type,
            "size": e.size,
            "mode": oct(e.mode),
            "uid": e.uid,
            "gid": e.gid,
            "mtime": e.mtime,
            **({"target": os.fsdecode(e.target)} if e.target else {}),
        }
        for e in entries
    ]
    emit_rows(
        rows, as_json, lambda r: f"{r['type']:<8} {r['mode']:>7} {r['size']:>12}  {r['name']}"
    )


@app.command()
@store_command
def diff(
    old: Annotated[str, typer.Argument(help="Older snapshot.")],
    new: Annotated[str, typer.Argument(help="Newer snapshot.")],
    loc: StoreLocation,
    as_json: JsonOpt = False,
) -> None:
    """Show what changed between two snapshots."""
    with closing(open_store(loc)) as s:
        a = s.catalog.find_snapshot(old)
        b = s.catalog.find_snapshot(new)
        changes = [c.to_public() for c in diff_trees(s.get, a.root, b.root)]
    sign = {"added": "+", "removed": "-", "modified": "M", "metadata": "U"}
    emit_rows(
        [{"id": c["path"], **c} for c in changes],
        as_json,
        lambda c: f"{sign[str(c['change'])]} {c['path']}",
    )


@app.command()
@store_command
def restore(
    snapshot: Annotated[str, typer.Argument(help="Snapshot id, unique prefix, or 'latest'.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to restore into.")],
    path: Annotated[
        list[str] | None, typer.Option("--path", help="Restore only this path (repeatable).")
    ] = None,
    delete: Annotated[
        bool, typer.Option("--delete", help="Remove files in the output that the snapshot lacks.")
    ] = False,
    special_files: SpecialFilesOpt = False,
    same_owner: SameOwnerOpt = False,
    *,
    loc: StoreLocation,
    as_json: JsonOpt = False,
) -> None:
    """Restore a snapshot (or some paths of it) into a folder; resumes if interrupted.

    Files already in place are kept only when their content checks out.
    """
    # The embedded store on ``sqlite3`` (``backup``: the catalog a backup uses) when it
    # can: no SQLAlchemy to import here nor in the workers' fork server (about 0.3 s of
    # CPU each), and a blob look-up without its transaction around each batch.
    with closing(open_store(loc, backup=True)) as s:
        snap = s.catalog.find_snapshot(snapshot)
        with byte_progress("restoring", total=snap.bytes if not path else None) as advance:
            st = restore_tree(
                s,
                snap.root,
                output,
                paths=path or [],
                delete_extra=delete,
                progress=advance,
                chunking=s.keys.chunking,
                special_files=special_files,
                same_owner=same_owner,
                processes=processes_for(snap.files, snap.bytes),
                # a worker opens the store as this process did; its fork server imports
                # the catalog's module (SQLAlchemy's only when this catalog needed it)
                opener=Opener(
                    functools.partial(open_store, loc, backup=True),
                    ("lamina.cli.store_open", type(s.catalog).__module__),
                ),
            )
    for e in st.errors:
        err_console.print(f"[yellow]warning:[/yellow] {e}")
    if as_json:
        emit_json(
            {
                "id": snap.id,
                "files": st.files,
                "dirs": st.dirs,
                "bytes": st.bytes,
                "skipped": st.skipped,
                "removed": st.removed,
                "errors": st.errors,
            }
        )
    else:
        typer.echo(
            f"restored {st.files} files ({st.skipped} already in place), {st.dirs} folders, "
            f"{human_bytes(st.bytes)} into {output}"
        )
    exit_with_warnings(len(st.errors), "restore errors")


@app.command()
@store_command
def forget(
    snapshots: Annotated[list[str], typer.Argument(help="Snapshots to forget.")],
    loc: StoreLocation,
    force: ForceOpt = False,
) -> None:
    """Forget snapshots; `lamina store gc` then frees what only they used."""
    with closing(open_store(loc, change=True, force=force)) as s:
        ids = [s.catalog.find_snapshot(x).id for x in snapshots]
        n = s.forget(ids)
    typer.echo(f"forgot {n} snapshots")
