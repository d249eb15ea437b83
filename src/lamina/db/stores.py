"""Open a store from a data directory or from explicit database and store URLs.

Embedded default: ``DATA/keys.json``, ``DATA/lamina.db`` (SQLite) and packs in
``DATA/store``. Scale-out: ``--db postgresql://...`` and ``--store s3://...``,
with the key file still under ``DATA`` (every server is given the same one).
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import Engine, delete, func, insert, select

from lamina.db.catalog import SqlCatalog
from lamina.db.engine import make_engine, read_tx, write_tx
from lamina.db.location import StoreLocation as StoreLocation
from lamina.db.migrate import upgrade
from lamina.db.models import store_state, users
from lamina.store.backends import open_backend
from lamina.store.keys import StoreKeys, read_keyfile, write_keyfile
from lamina.store.pack import DEFAULT_PACK_SIZE
from lamina.store.repository import Store


def open_database(loc: StoreLocation) -> Engine:
    """The database engine, migrated to the newest schema."""
    if loc.db_url is None:
        loc.data.mkdir(parents=True, exist_ok=True)
    engine = make_engine(loc.database)
    upgrade(engine)
    return engine


def init_store(
    loc: StoreLocation,
    passphrase: str | None = None,
    keys: StoreKeys | None = None,
    engine: Engine | None = None,
) -> Store:
    """Create the key file (unless one is there: joining servers share it), schema and config."""
    if keys is None:
        if loc.keys_path.exists():
            keys = read_keyfile(loc.keys_path, passphrase or loc.passphrase)
        else:
            keys = StoreKeys.generate()
            write_keyfile(loc.keys_path, keys, passphrase or loc.passphrase)
    engine = engine or open_database(loc)
    catalog = SqlCatalog(engine)
    catalog.bind_store(keys.store_id)
    store = Store(open_backend(loc.packs), catalog, keys)
    store.write_config()
    return store


def open_store(
    loc: StoreLocation, passphrase: str | None = None, pack_size: int = DEFAULT_PACK_SIZE
) -> Store:
    keys = read_keyfile(loc.keys_path, passphrase or loc.passphrase)
    engine = open_database(loc)
    catalog = SqlCatalog(engine)
    catalog.bind_store(keys.store_id)
    store = Store(open_backend(loc.packs), catalog, keys, pack_size=pack_size)
    store.verify_config()
    return store


def server_managed(store: Store) -> bool:
    """True once a Lamina server has run on this store's database (it made its users):
    the snapshots there belong to CVDs, and the serverless commands leave them alone."""
    catalog = store.catalog
    if not isinstance(catalog, SqlCatalog):
        return False
    with read_tx(catalog.engine) as c:
        return bool(c.execute(select(func.count()).select_from(users)).scalar_one())


#: ``store_state`` key of the last garbage collection's figures (JSON).
GC_LAST = "gc_last"


def record_gc(store: Store, seconds: float, bytes_freed: int) -> None:
    """Remember how long the last garbage collection took (for ``/metrics``)."""
    catalog = store.catalog
    if not isinstance(catalog, SqlCatalog):
        return
    doc = {
        "seconds": round(seconds, 3),
        "bytes_freed": bytes_freed,
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }
    with write_tx(catalog.engine) as c:
        c.execute(delete(store_state).where(store_state.c.key == GC_LAST))
        c.execute(insert(store_state).values(key=GC_LAST, value=json.dumps(doc)))


def last_gc(engine: Engine) -> dict[str, object] | None:
    """What :func:`record_gc` kept, or None before the first garbage collection."""
    with read_tx(engine) as c:
        raw = c.execute(select(store_state.c.value).where(store_state.c.key == GC_LAST)).scalar()
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
