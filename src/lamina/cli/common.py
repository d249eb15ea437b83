"""Options and arguments shared by the command groups, and the data folder's permissions.

What opens a store (``--data``, ``--db``, ``--store``, ``--keyfile``) is in
``store_options.py``: it needs the store's libraries, which the agent's commands do not load.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import inspect
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli.logs import LogFlags
from lamina.cli.output import emit_json
from lamina.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
CvdArg = Annotated[
    str, typer.Argument(help="CVD name or id (or a unique prefix of its id).", show_default=False)
]
DeviceArg = Annotated[
    str,
    typer.Argument(
        help="Device hostname or id (or a unique prefix of its id).", show_default=False
    ),
]
UserArg = Annotated[str, typer.Argument(help="User name.", show_default=False)]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from stdin.")
]


def read_password(prompt: str, stdin: bool) -> str:
    """A password from stdin's first line (``--password-stdin``), or asked at the terminal."""
    password = sys.stdin.readline().rstrip("\n") if stdin else getpass.getpass(prompt)
    if not password:
        raise UsageError("no password given")
    return password


def emit(doc: Any, as_json: bool, line: str) -> None:
    """What a command that shows one thing prints: ``doc`` as JSON, or ``line``."""
    if as_json:
        emit_json(doc)
    else:
        typer.echo(line)


def emit_rows(rows: list[Any], as_json: bool, line: Callable[[Any], str]) -> None:
    """What a command that lists prints: ``rows`` as one JSON document, or a line each."""
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        typer.echo(line(r))


#: One option of a group: its parameter name, its ``Annotated`` Typer type, its default.
GroupOption = tuple[str, Any, Any]


def option_group(
    param: str, options: Iterable[GroupOption], build: Callable[..., Any]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator that puts the command's parameter ``param`` on the command line as the
    group of ``options`` (at its place, so in the same place in ``--help``), and calls
    the command with ``param=build(**values of the options)``: one declaration for a set
    of options several commands take (the store's location, a policy's settings).

    Goes under ``@app.command()``: Typer reads the options from the signature made here.
    """
    group = list(options)
    names = [name for name, _, _ in group]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        sig = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        for p in sig.parameters.values():
            if p.name == param:
                params += [
                    inspect.Parameter(name, p.kind, default=default, annotation=annotation)
                    for name, annotation, default in group
                ]
            else:
                params.append(p)

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> None:
            values = {name: kwargs.pop(name) for name in names}
            command(*args, **{param: build(**values)}, **kwargs)

        run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return run

    return decorate


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """Seconds in ``30s``, ``15m``, ``1h``, ``7d``, ``2w``."""
    m = _DURATION.match(text.strip())
    if not m:
        raise UsageError(f"invalid duration {text!r}: use a number and s, m, h, d or w (e.g. 1h)")
    return int(m.group(1)) * _UNIT[m.group(2)]


#: The files of the embedded SQLite database under --data (the WAL and SHM files too).
SQLITE_FILES = ("lamina.db", "lamina.db-wal", "lamina.db-shm")


@contextlib.contextmanager
def owner_only(data: Path) -> Iterator[None]:
    """Run with umask 077, so that whatever the server creates under ``data`` (the
    database, its WAL and SHM files, packs) is the owner's alone; on the way in and
    out, tighten the data folder (0700) and the database files (0600) that an older
    version left readable. Files owned by someone else are left as they are."""
    old = os.umask(0o077)
    try:
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        _tighten(data, 0o700)
        for name in SQLITE_FILES:
            _tighten(data / name, 0o600)
        yield
        for name in SQLITE_FILES:
            _tighten(data / name, 0o600)
    finally:
        os.umask(old)


def _tighten(path: Path, mode: int) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) == mode:
        return
    os.chmod(path, mode)


#: Restores into a folder (``--output``): the tree may come from an endpoint, so by
#: default no device nodes or FIFOs, no setuid/setgid bits and no chown (as tar as non-root).
SpecialFilesOpt = Annotated[
    bool,
    typer.Option(
        "--special-files",
        help="Also make device nodes and FIFOs, and keep setuid/setgid bits (off by default).",
    ),
]
SameOwnerOpt = Annotated[
    bool,
    typer.Option(
        "--same-owner", help="Give files the snapshot's owners (as root; off by default)."
    ),
]


LogFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="Log lines as text, journal (<N> priority prefixes, no timestamps) or json; "
        "default auto: journal under systemd, text otherwise.",
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug lines too.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Log only warnings and errors.")]

#: The log options of the long-running commands, given to a command as ``logs``.
log_options = option_group(
    "logs",
    [
        ("log_format", LogFormatOpt, None),
        ("verbose", VerboseOpt, False),
        ("quiet", QuietOpt, False),
    ],
    LogFlags,
)
