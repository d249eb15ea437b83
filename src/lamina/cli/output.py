"""Printing for the CLI: JSON for scripts, Rich for people, one line on stderr for errors.

Names the CLI prints come from others: device hostnames and facts, user names typed at
a login prompt, file names in snapshots. A terminal obeys the control characters in
them (``\x1b]0;owned\x07`` retitles the window, CSI sequences move the cursor or
rewrite what was printed before), so every print path goes through :func:`safe`:
``main()`` wraps ``sys.stdout`` and ``sys.stderr`` in :class:`SafeStream` (``typer.echo``,
``print``, error lines), and :data:`err_console` cleans the strings it is given before
Rich adds its own styling (Rich writes around :class:`SafeStream`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, NoReturn

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

from lamina.errors import WARNINGS_EXIT, LaminaError

# C0 controls but newline and tab, DEL, C1 controls (0x9b is a one-byte CSI), the
# bidirectional overrides that reorder what a line shows, and lone surrogates (a file
# name that is not UTF-8, decoded with surrogateescape).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    if 0xDC80 <= c <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def safe(text: str) -> str:
    """``text`` with every terminal control character written out (``\\x1b``), as
    Python's ``repr`` would; newlines and tabs are kept."""
    return _UNSAFE.sub(_escape, text)


class SafeStream:
    """A text stream that passes everything written to it through :func:`safe`.

    Bytes written to ``.buffer`` (file contents a command copies out) are not touched.
    Rich consoles (Typer's help, :data:`err_console`) write their styling to the raw
    stream, found through ``rich_proxied_file`` as Rich looks for it; the only one
    that prints names from elsewhere, :data:`err_console`, cleans them first.
    """

    def __init__(self, raw: IO[str]) -> None:
        self.raw = raw

    @property
    def rich_proxied_file(self) -> IO[str]:
        return self.raw

    def write(self, text: str) -> int:
        self.raw.write(safe(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def install_safe_streams() -> None:
    """Send ``sys.stdout`` and ``sys.stderr`` through :func:`safe` (once; ``main()`` calls it)."""
    if not isinstance(sys.stdout, SafeStream):
        sys.stdout = SafeStream(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, SafeStream):
        sys.stderr = SafeStream(sys.stderr)  # type: ignore[assignment]


class SafeConsole(Console):
    """Rich for people: the strings it prints are cleaned by :func:`safe` before Rich
    reads their markup; Rich's own styling goes to the raw stream."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(safe(o) if isinstance(o, str) else o for o in objects), **kwargs)


err_console = SafeConsole(stderr=True)


def fail(e: LaminaError) -> NoReturn:
    print(f"error: {safe(e.message)}", file=sys.stderr)
    sys.exit(e.exit_code)


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def progress_line(what: str, done: int, files: int, total: int | None, seconds: float) -> str:
    """One line of progress for a log: percent, bytes, files, speed and time left."""
    rate = done / seconds if seconds > 0 else 0.0
    parts = [f"{what}:"]
    if total:
        parts.append(
            f"{min(100, int(100 * done / total))}% {human_bytes(done)} of {human_bytes(total)},"
        )
    else:
        parts.append(f"{human_bytes(done)},")
    parts.append(f"{files} files, {human_bytes(rate)}/s")
    if total and rate > 0 and done < total:
        left = int((total - done) / rate)
        parts.append(f", about {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d} left")
    return " ".join(parts).replace(" ,", ",")


@contextmanager
def byte_progress(what: str, total: int | None = None, log_every: float = 10.0) -> Iterator[Any]:
    """Progress over files and bytes: on a terminal a bar (with a total: percent and time
    left); elsewhere (a log, a pipe) one line on stderr every ``log_every`` seconds."""
    if not err_console.is_terminal:
        started = last = time.monotonic()
        done = files = 0

        def log_advance(nfiles: int, nbytes: int, new_total: int | None = None) -> None:
            nonlocal done, files, last, total
            total = new_total or total
            files += nfiles
            done += nbytes
            at = time.monotonic()
            if at - last >= log_every:
                last = at
                sys.stderr.write(progress_line(what, done, files, total, at - started) + "\n")
                sys.stderr.flush()

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
        task = progress.add_task(what, total=total, files=0)
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


def print_table(headers: list[str], rows: Iterable[Iterable[object]]) -> None:
    """Columns with a header line on stdout, as ``ps`` and ``docker ps`` print them: each
    as wide as its widest cell, two spaces apart, never wrapped, no trailing blanks (so
    ``grep`` and ``awk`` read them); an empty cell is ``-``; cells go through :func:`safe`."""
    cells = [[safe("-" if c is None or c == "" else str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")


def age(when: str | None) -> str:
    """``2026-01-02T03:04:05+00:00`` as ``2026-01-02 03:04``; None as ``never``."""
    if not when:
        return "never"
    return when[:16].replace("T", " ")
