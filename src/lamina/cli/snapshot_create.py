"""What ``lamina snapshot create`` does, as a plain function: the Typer command
(``snapshot.py``) and the quick entry (``quick.py``) both call it, so the two print the
same. No Typer, click or pydantic on the way: building Typer's parameters took about a
fifth of an unchanged re-backup's CPU on a small tree; nor Rich off a terminal, unless
there is something to warn about (tests/cli/test_startup.py)."""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from lamina.cli.output import emit_json, human_bytes, log_progress, stderr_is_terminal
from lamina.cli.store_open import open_store
from lamina.db.location import StoreLocation
from lamina.tree.backup import backup
from lamina.tree.scan_scope import ExcludeFn, estimate


def _exclude(patterns: list[str]) -> ExcludeFn | None:
    if not patterns:
        return None
    pats = [p.rstrip("/") for p in patterns]

    def match(rel: bytes, _is_dir: bool) -> bool:
        text = os.fsdecode(rel)
        base = text.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(text, p) or fnmatch.fnmatchcase(base, p) for p in pats)

    return match


def _nothing(_rel: bytes, _is_dir: bool) -> bool:
    return False


def create_snapshot(
    loc: StoreLocation,
    path: Path,
    source: str | None,
    exclude: list[str],
    *,
    force: bool,
    as_json: bool,
) -> None:
    """Back up a folder into a new snapshot; unchanged files are not read again."""
    with closing(open_store(loc, change=True, force=force, backup=True)) as s:
        src = source or f"{os.uname().nodename}:{path.resolve()}"
        cache = loc.cache_dir / (
            "files-" + "".join(c if c.isalnum() else "_" for c in src)[-100:] + ".sqlite"
        )
        excluded = _exclude(exclude)
        # The bar's total: the source's last snapshot's size (as the agent's later syncs
        # do); only a first backup walks the metadata first (as the agent's first sync),
        # and only when the total is shown: on a terminal, or in a log's first line.
        earlier = s.catalog.snapshots(source=src)
        total: int | Callable[[], int]
        if earlier:
            total = earlier[-1].bytes
        else:

            def total() -> int:
                return estimate(path, excluded or _nothing, lambda _rel: False)[1]

        if stderr_is_terminal():  # Rich (a tenth of a second of start-up) for the bar
            from lamina.cli.progress import byte_progress as progress
        else:
            progress = log_progress
        with progress("backing up", total=total) as advance:
            result = backup(
                s,
                path,
                source=src,
                cache_path=cache,
                exclude=excluded,
                progress=advance,
            )
    if result.stats.errors:
        from lamina.cli.progress import err_console

        for e in result.stats.errors:
            err_console.print(f"[yellow]skipped:[/yellow] {e}")
    snap = result.snapshot
    doc = {
        **snap.to_public(),
        "files_read": result.stats.files_read,
        "files_unchanged": result.stats.files_unchanged,
        "new_blobs": result.new_blobs,
        "new_bytes": result.new_raw_bytes,
        "new_stored_bytes": result.new_stored_bytes,
        "errors": result.stats.errors,
    }
    if as_json:
        emit_json(doc)
    else:
        sys.stdout.write(
            f"snapshot {snap.id[:12]} of {snap.source}: {snap.files} files, {human_bytes(snap.bytes)}; "
            f"{result.stats.files_read} read, {result.stats.files_unchanged} unchanged; "
            f"{human_bytes(result.new_stored_bytes)} added to the store\n"
        )
        sys.stdout.flush()
    if result.stats.errors:
        from lamina.cli.progress import exit_with_warnings

        exit_with_warnings(len(result.stats.errors), "files skipped")
