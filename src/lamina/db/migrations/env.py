"""Alembic environment: the engine is handed in by ``lamina.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from lamina.db.models import metadata

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run migrations through lamina.db.migrate.upgrade(engine)")

with engine.connect() as connection:
    connection = connection.execution_options(lamina_write=True)
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=engine.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
