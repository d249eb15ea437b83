"""srvcpu: cvd_blobs keyed by (blob_id, cvd_id) in one b-tree (WITHOUT ROWID on SQLite,
no index by blob of its own)

Create Date: 2026-12-01 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0012_srvcpu"
down_revision = "0011_task_reported"


def _rebuild_sqlite(key: tuple[str, str], rowid: bool) -> None:
    """SQLite: ``cvd_blobs`` made again with the primary key ``key`` (a table's key and
    ``WITHOUT ROWID`` are fixed when it is made), its rows copied in key order."""
    op.create_table(
        "cvd_blobs_new",
        *(
            sa.Column("blob_id", sa.LargeBinary(length=32), nullable=False)
            if name == "blob_id"
            else cols.uuid("cvd_id")
            for name in key
        ),
        cols.foreign_key("cvd_blobs", "cvd_id", "cvds.id", ondelete="CASCADE"),
        cols.primary_key("cvd_blobs", *key),
        sqlite_with_rowid=rowid,
    )
    new, old = (
        sa.table("cvd_blobs_new", *map(sa.column, key)),
        sa.table("cvd_blobs", *map(sa.column, key)),
    )
    columns = [old.c[name] for name in key]
    op.execute(new.insert().from_select(list(key), sa.select(*columns).order_by(*columns)))
    op.drop_table("cvd_blobs")
    op.rename_table("cvd_blobs_new", "cvd_blobs")


def _rekey_postgresql(*key: str) -> None:
    """PostgreSQL: ``cvd_blobs``' primary key on ``key``, in that order."""
    op.drop_constraint("pk_cvd_blobs", "cvd_blobs", type_="primary")
    op.create_primary_key("pk_cvd_blobs", "cvd_blobs", list(key))


def upgrade() -> None:
    cols.drop_index("cvd_blobs", "blob_id")
    if op.get_context().dialect.name == "sqlite":
        _rebuild_sqlite(("blob_id", "cvd_id"), rowid=False)
    else:
        _rekey_postgresql("blob_id", "cvd_id")


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _rebuild_sqlite(("cvd_id", "blob_id"), rowid=True)
    else:
        _rekey_postgresql("cvd_id", "blob_id")
    cols.create_index("cvd_blobs", "blob_id")
