"""Alembic migrations, run in-process: every entry point upgrades to head on start.

Opening a database whose schema is already at ``HEAD`` costs one query and does
not load Alembic (about 60 ms of start-up for every command otherwise). Importing
this module loads neither SQLAlchemy nor Alembic: ``sqlite_read`` compares a SQLite
database's revision with :data:`HEAD` through the standard library.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Engine

MIGRATIONS = Path(__file__).parent / "migrations"
#: The newest revision in migrations/versions (a test keeps this in step with Alembic).
HEAD = "0013_srvsql"


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config  # loaded only when a migration runs (see above)

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    # SQLAlchemy is imported here, not above: the CLI's quick entry reads HEAD alone.
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    try:
        with engine.connect() as c:
            return c.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None  # no alembic_version table yet: an empty database


def upgrade(engine: Engine) -> None:
    """Bring the database schema to the newest version (idempotent)."""
    if current_revision(engine) == HEAD:
        return
    from alembic import command  # loaded only when a migration runs (see above)

    command.upgrade(alembic_config(engine), "head")
