"""Options shared by the commands that open a store (``store``, ``snapshot``), and the
one block that opens it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lamina.errors import UsageError
from lamina.store.keys import PASSPHRASE_ENV
from lamina.store.pack import DEFAULT_PACK_SIZE

if TYPE_CHECKING:
    # The database layer (SQLAlchemy, Alembic) is the "server" extra: `pip install lamina`
    # (the agent and the client CLI) does not have it, so it is imported where a command
    # opens a store, through server_libraries().
    from types import ModuleType

    from lamina.db.stores import StoreLocation
    from lamina.store.repository import Store

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
DEFAULT_DATA = Path("lamina-data")


SERVER_EXTRA_HINT = "pip install 'lamina[server]'"


def server_libraries() -> ModuleType:
    """``lamina.db.stores``, or a clear error when the server's libraries are not installed."""
    try:
        from lamina.db import stores
    except ModuleNotFoundError as e:
        raise UsageError(
            f"this command opens a store and needs the server's libraries ({e.name} is "
            f"missing): {SERVER_EXTRA_HINT}"
        ) from e
    return stores


def location(data: Path, db: str | None, store: str | None, keyfile: Path | None) -> StoreLocation:
    """Where the store is; a sealed key file opens with ``LAMINA_STORE_PASSPHRASE``."""
    loc: StoreLocation = server_libraries().StoreLocation(
        data=data,
        db_url=db,
        store_url=store,
        keyfile=keyfile,
        passphrase=os.environ.get(PASSPHRASE_ENV) or None,
    )
    return loc


ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Change the store even though a Lamina server manages it."),
]


def open_store(loc: StoreLocation, *, change: bool = False, force: bool = False) -> Store:
    """Open the store at ``loc``; with ``change``, refuse one that a server manages
    (its snapshots belong to CVDs) unless ``force``."""
    stores = server_libraries()
    s: Store = stores.open_store(loc, pack_size=pack_size())
    if change and not force and stores.server_managed(s):
        s.close()
        raise UsageError(
            f"the store under {loc.data} is managed by a Lamina server: change it through "
            "the server (`lamina cvd ...`), use another --data folder for serverless "
            "backups, or give --force"
        )
    return s


def pack_size() -> int:
    """Target pack size; ``LAMINA_PACK_SIZE`` (bytes) overrides the 16 MiB default."""
    raw = os.environ.get("LAMINA_PACK_SIZE")
    if not raw:
        return DEFAULT_PACK_SIZE
    if not raw.isdigit() or not 4096 <= int(raw) <= 1 << 30:
        raise UsageError(f"LAMINA_PACK_SIZE must be a byte count from 4096 to 1 GiB, got {raw!r}")
    return int(raw)
