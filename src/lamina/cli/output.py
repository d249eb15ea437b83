"""Printing for the CLI: JSON for scripts, Rich for people, one line on stderr for errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from lamina.errors import LaminaError

err_console = Console(stderr=True)


def fail(e: LaminaError) -> NoReturn:
    print(f"error: {e.message}", file=sys.stderr)
    sys.exit(e.exit_code)


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@contextmanager
def byte_progress(what: str, total: int | None = None) -> Iterator[Any]:
    """A progress bar over files and bytes; silent when stderr is not a terminal."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[files]} files"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    with progress:
        task = progress.add_task(what, total=total, files=0)
        files = 0

        def advance(nfiles: int, nbytes: int) -> None:
            nonlocal files
            files += nfiles
            progress.update(task, advance=nbytes, files=files)

        yield advance


@contextmanager
def step_progress(what: str) -> Iterator[Any]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    with progress:
        task = progress.add_task(what, total=None)

        def update(label: str, done: int = 0, total: int | None = None) -> None:
            progress.update(task, description=f"{what}: {label}", completed=done, total=total)

        yield update
