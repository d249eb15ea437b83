"""Printing for the CLI: JSON for scripts, plain lines and tables, one line on stderr for errors
(Rich's bars for people are in ``progress.py``, which only long commands import).

Names the CLI prints come from others: device hostnames and facts, user names typed at
a login prompt, file names in snapshots. A terminal obeys the control characters in
them (``\x1b]0;owned\x07`` retitles the window, CSI sequences move the cursor or
rewrite what was printed before), so every print path goes through :func:`safe`:
``main()`` wraps ``sys.stdout`` and ``sys.stderr`` in :class:`SafeStream` (``typer.echo``,
``print``, error lines), and ``progress.err_console`` cleans the strings it is given before
Rich adds its own styling (Rich writes around :class:`SafeStream`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, NoReturn

from lamina.errors import LaminaError

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


def stderr_is_terminal() -> bool:
    """Whether ``progress.err_console`` takes stderr for a terminal, decided as Rich
    decides it (``TTY_COMPATIBLE``, then ``FORCE_COLOR``, then ``isatty``) without
    importing Rich: a command that only draws a bar on a terminal imports Rich only then
    (tests/cli/test_output.py compares the two)."""
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible in ("0", "1"):
        return tty_compatible == "1"
    force_color = os.environ.get("FORCE_COLOR")
    if force_color is not None:
        return force_color != ""
    try:
        return sys.stderr.isatty()
    except ValueError:  # closed
        return False


@contextmanager
def log_progress(
    what: str, total: int | Callable[[], int] | None = None, log_every: float = 10.0
) -> Iterator[Callable[..., None]]:
    """Progress off a terminal (a log, a pipe): one :func:`progress_line` on stderr every
    ``log_every`` seconds; ``total`` as ``progress.byte_progress`` takes it."""
    started = last = time.monotonic()
    done = files = 0

    def log_advance(nfiles: int, nbytes: int, new_total: int | None = None) -> None:
        nonlocal done, files, last, total
        total = new_total or total
        files += nfiles
        done += nbytes
        at = time.monotonic()
        if at - last >= log_every:
            if callable(total):
                total = total()
            last = at
            sys.stderr.write(progress_line(what, done, files, total, at - started) + "\n")
            sys.stderr.flush()

    yield log_advance


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
