"""What a running server holds: settings, the database engine, the store."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from lamina.config import ServerSettings
from lamina.store.repository import Store


@dataclass
class ServerContext:
    settings: ServerSettings
    engine: Engine
    store: Store
