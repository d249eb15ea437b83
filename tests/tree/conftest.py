from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.db.stores import StoreLocation, init_store
from lamina.store.repository import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real store: SQLite catalog and a local pack folder."""
    s = init_store(StoreLocation(data=tmp_path / "data"))
    yield s
    s.close()
