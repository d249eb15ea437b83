"""events, for the console

Create Date: 2026-11-30 03:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        cols.timestamp("time"),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("acknowledged_by", sa.String(length=128), nullable=True),
        cols.timestamp("acknowledged", nullable=True),
        cols.primary_key("events", "id"),
    )
    cols.create_index("events", "acknowledged")


def downgrade() -> None:
    cols.drop_index("events", "acknowledged")
    op.drop_table("events")
