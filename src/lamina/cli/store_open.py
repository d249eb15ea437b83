"""The one block that opens a store for the CLI's commands (``store``, ``snapshot``), and
the read of its snapshots that ``snapshot list`` makes. No Typer here: the quick entry
(``quick.py``) calls these too. The Typer options that name a store are in
``store_options.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lamina.db.location import StoreLocation
from lamina.errors import UsageError
from lamina.store.keys import PASSPHRASE_ENV
from lamina.store.pack import DEFAULT_PACK_SIZE

if TYPE_CHECKING:
    # The database layer (SQLAlchemy, Alembic) is the "server" extra: `pip install lamina`
    # (the agent and the client CLI) does not have it, so it is imported where a command
    # opens a store, through server_libraries().
    from types import ModuleType

    from lamina.store.catalog import SnapshotRecord
    from lamina.store.repository import Store

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
    return StoreLocation(
        data=data,
        db_url=db,
        store_url=store,
        keyfile=keyfile,
        passphrase=os.environ.get(PASSPHRASE_ENV) or None,
    )


def open_store(
    loc: StoreLocation, *, change: bool = False, force: bool = False, backup: bool = False
) -> Store:
    """Open the store at ``loc``; with ``change``, refuse one that a server manages
    (its snapshots belong to CVDs) unless ``force``. With ``backup`` (a command that
    only backs up, or a restore), the embedded store opens on the standard library's ``sqlite3``
    once it is migrated and bound (``lamina.db.sqlite_catalog``: no SQLAlchemy)."""
    s: Store | None = None
    if backup:
        from lamina.db.sqlite_catalog import SqliteCatalog, open_embedded

        s = open_embedded(loc, pack_size())
    if s is not None:
        assert isinstance(s.catalog, SqliteCatalog)
        managed = s.catalog.server_managed
    else:
        stores = server_libraries()
        s = stores.open_store(loc, pack_size=pack_size())
        managed = lambda: stores.server_managed(s)  # noqa: E731
    if change and not force and managed():
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


def read_snapshots(loc: StoreLocation, source: str | None = None) -> list[SnapshotRecord]:
    """The store's snapshots, oldest first (of ``source`` only, if given), with the
    same checks and errors as :func:`open_store` and ``catalog.snapshots``.

    On the embedded SQLite database, once it is migrated and bound to this store, the
    rows are read with the standard library (``lamina.db.sqlite_read``) and the key
    file is checked against the store's config object, without SQLAlchemy: about half
    of the command's start-up otherwise. Any other store opens the usual way.
    """
    pack_size()  # a bad LAMINA_PACK_SIZE is refused here as by every command
    if loc.db_url is None:
        from lamina.db.sqlite_read import read_snapshots as read_sqlite
        from lamina.store.backends import open_backend
        from lamina.store.keys import read_keyfile
        from lamina.store.repository import check_config

        keys = read_keyfile(loc.keys_path, loc.passphrase)
        found = read_sqlite(loc.data / "lamina.db", keys.store_id, source)
        if found is not None:
            backend = open_backend(loc.packs)
            try:
                check_config(backend, keys)
            finally:
                backend.close()
            return found
    s = open_store(loc)
    try:
        return s.catalog.snapshots(source)
    finally:
        s.close()
