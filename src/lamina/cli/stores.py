"""Where the store and snapshot commands find their store: options → ``StoreLocation``.

Apart from ``cli/common.py`` so that the commands that never open a store (the
agent's above all, run on endpoints before services start) never load the
database or pack modules: an import-linter contract holds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from lamina.db.stores import StoreLocation
from lamina.errors import UsageError
from lamina.store.pack import DEFAULT_PACK_SIZE


def location(data: Path, db: str | None, store: str | None, keyfile: Path | None) -> StoreLocation:
    return StoreLocation(data=data, db_url=db, store_url=store, keyfile=keyfile)


def pack_size() -> int:
    """Target pack size; ``LAMINA_PACK_SIZE`` (bytes) overrides the 16 MiB default."""
    raw = os.environ.get("LAMINA_PACK_SIZE")
    if not raw:
        return DEFAULT_PACK_SIZE
    if not raw.isdigit() or not 4096 <= int(raw) <= 1 << 30:
        raise UsageError(f"LAMINA_PACK_SIZE must be a byte count from 4096 to 1 GiB, got {raw!r}")
    return int(raw)
