"""Options shared by the commands that open a store (``store``, ``snapshot``); the one
block that opens it is ``store_open.py`` (no Typer: the quick entry uses it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lamina.cli.common import option_group

# Re-exported: the commands import the options and the block that opens from here.
from lamina.cli.store_open import DEFAULT_DATA as DEFAULT_DATA
from lamina.cli.store_open import SERVER_EXTRA_HINT as SERVER_EXTRA_HINT
from lamina.cli.store_open import location as location
from lamina.cli.store_open import open_store as open_store
from lamina.cli.store_open import pack_size as pack_size
from lamina.cli.store_open import server_libraries as server_libraries

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        envvar="LAMINA_DATA",
        help="Data directory (key file; SQLite and packs by default).",
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LAMINA_DB",
        help="Database URL (postgresql://...); default SQLite under --data.",
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="LAMINA_STORE",
        help="Pack store URL (a path or s3://...); default DATA/store.",
    ),
]
KeyfileOpt = Annotated[
    Path | None,
    typer.Option("--keyfile", envvar="LAMINA_KEYFILE", help="Key file; default DATA/keys.json."),
]


ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Change the store even though a Lamina server manages it."),
]


#: Gives a command the four options that name a store (``--data``, ``--db``, ``--store``,
#: ``--keyfile``) in place of its ``loc: StoreLocation`` parameter, which gets their
#: :func:`location`. Goes under ``@app.command()``.
store_command = option_group(
    "loc",
    [
        ("data", DataOpt, DEFAULT_DATA),
        ("db", DbOpt, None),
        ("store", StoreOpt, None),
        ("keyfile", KeyfileOpt, None),
    ],
    location,
)
