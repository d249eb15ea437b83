"""Where a store is: its data folder, database, packs and key file (no database library:
the CLI's quick entry reads a store's snapshots without SQLAlchemy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lamina.store.keys import KEYFILE_NAME


@dataclass(frozen=True)
class StoreLocation:
    data: Path
    db_url: str | None = None
    store_url: str | None = None
    keyfile: Path | None = None
    #: opens a sealed key file (``LAMINA_STORE_PASSPHRASE``, read by the CLI and the server)
    passphrase: str | None = field(default=None, repr=False)

    @property
    def keys_path(self) -> Path:
        return self.keyfile or self.data / KEYFILE_NAME

    @property
    def database(self) -> str:
        return self.db_url or f"sqlite:///{(self.data / 'lamina.db').resolve()}"

    @property
    def packs(self) -> str:
        return self.store_url or str((self.data / "store").resolve())

    @property
    def cache_dir(self) -> Path:
        return self.data / "cache"
