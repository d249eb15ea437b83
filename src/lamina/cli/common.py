"""Options shared by the commands that open a store."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator
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
