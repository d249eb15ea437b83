"""driver profiles (driver packs are layers of kind "driver")

Create Date: 2026-11-30 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0008_drivers"
down_revision = "0007"


def upgrade() -> None:
    cols.create_named_table(
        "driver_profiles",
        sa.Column("os_family", sa.String(length=64), nullable=True),
        sa.Column("packs", sa.JSON(), nullable=False),
        sa.Column("matches", sa.JSON(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        updated=True,
    )


def downgrade() -> None:
    op.drop_table("driver_profiles")
