"""Rich for people: progress bars and status lines on stderr.

Only the commands that run long import this module (Rich costs a tenth of a second to
import, which ``lamina --help`` and ``lamina agent boot`` do not pay). Strings printed
through :data:`err_console` are cleaned by ``output.safe`` first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lamina.cli.output import log_progress, safe
from lamina.errors import WARNINGS_EXIT


class SafeConsole(Console):
    """Rich for people: the strings it prints are cleaned by :func:`safe` before Rich
    reads their markup; Rich's own styling goes to the raw stream."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(safe(o) if isinstance(o, str) else o for o in objects), **kwargs)


err_console = SafeConsole(stderr=True)


@contextmanager
def byte_progress(
    what: str, total: int | Callable[[], int] | None = None, log_every: float = 10.0
) -> Iterator[Any]:
    """Progress over files and bytes: on a terminal a bar (with a total: percent and time
    left); elsewhere (a log, a pipe) one line on stderr every ``log_every`` seconds.

    ``total`` may be a function that works it out (a walk of the metadata, say): it is
    called when something is first drawn with it, at once on a terminal, at the first
    line of a log; never by work that ends before its first line."""
    if not err_console.is_terminal:
        with log_progress(what, total, log_every) as log_advance:
            yield log_advance
        return
    columns: list[Any] = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn()]
    columns.append(TaskProgressColumn())  # blank while the total is unknown
    columns += [DownloadColumn(), TransferSpeedColumn(), TextColumn("{task.fields[files]} files")]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    progress = Progress(
        *columns,
        console=err_console,
        transient=True,
        # What commands print meanwhile goes through SafeStream, not Rich's ANSI decoder.
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with progress:
        task = progress.add_task(what, total=total() if callable(total) else total, files=0)
        nfiles_done = 0

        def advance(nfiles: int, nbytes: int, new_total: int | None = None) -> None:
            """Count ``nfiles`` and ``nbytes`` more; ``new_total``: the total, once known."""
            nonlocal nfiles_done
            nfiles_done += nfiles
            if new_total:
                progress.update(task, total=new_total)
            progress.update(task, advance=nbytes, files=nfiles_done)

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
        # What commands print meanwhile goes through SafeStream, not Rich's ANSI decoder.
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with progress:
        task = progress.add_task(what, total=None)

        def update(label: str, done: int = 0, total: int | None = None) -> None:
            progress.update(
                task, description=f"{what}: {safe(label)}", completed=done, total=total or None
            )

        yield update


def exit_with_warnings(warnings: int, what: str) -> None:
    """End a command that finished with ``warnings`` (files skipped, not restored): one
    line on stderr and exit code ``WARNINGS_EXIT``; nothing when there were none."""
    if warnings:
        err_console.print(f"finished with warnings: {warnings} {what} (exit code {WARNINGS_EXIT})")
        raise SystemExit(WARNINGS_EXIT)
