"""collections

Create Date: 2026-11-25 19:12:24.414271
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    cols.create_named_table("collections", sa.Column("filter", sa.Text(), nullable=False))
    cols.create_link_table(
        "collection_members", ("collection_id", "collections.id"), ("cvd_id", "cvds.id")
    )


def downgrade() -> None:
    op.drop_table("collection_members")
    op.drop_table("collections")
