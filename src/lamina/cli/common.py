"""Options shared by the commands that open a store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from lamina.db.stores import StoreLocation
from lamina.errors import UsageError

DataOpt = Annotated[
    Path,
    typer.Option("--data", envvar="LAMINA_DATA", help="Data directory (key file; SQLite and packs by default)."),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", envvar="LAMINA_DB", help="Database URL (postgresql://...); default SQLite under --data."),
]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", envvar="LAMINA_STORE", help="Pack store URL (a path or s3://...); default DATA/store."),
]
KeyfileOpt = Annotated[
    Path | None,
    typer.Option("--keyfile", envvar="LAMINA_KEYFILE", help="Key file; default DATA/keys.json."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]

DEFAULT_DATA = Path("lamina-data")


def location(data: Path, db: str | None, store: str | None, keyfile: Path | None) -> StoreLocation:
    return StoreLocation(data=data, db_url=db, store_url=store, keyfile=keyfile)


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """Seconds in ``30s``, ``15m``, ``1h``, ``7d``, ``2w``."""
    m = _DURATION.match(text.strip())
    if not m:
        raise UsageError(f"invalid duration {text!r}: use a number and s, m, h, d or w (e.g. 1h)")
    return int(m.group(1)) * _UNIT[m.group(2)]
