"""layers

Create Date: 2026-11-25 19:05:51.865959
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0003"
down_revision = "0002"


def create_cvd_layer_list(table: str) -> None:
    """Per CVD, layer versions in order (position 0 is the base layer if any)."""
    op.create_table(
        table,
        cols.uuid("cvd_id"),
        sa.Column("position", sa.Integer(), nullable=False),
        cols.uuid("version_id"),
        cols.foreign_key(table, "cvd_id", "cvds.id", ondelete="CASCADE"),
        cols.foreign_key(table, "version_id", "layer_versions.id"),
        cols.primary_key(table, "cvd_id", "position"),
    )


def upgrade() -> None:
    cols.create_named_table("layers", sa.Column("kind", sa.String(length=8), nullable=False))
    cols.create_versions_table(
        "layer_versions",
        "layer_id",
        "layers.id",
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("whiteouts", sa.JSON(), nullable=False),
        cols.uuid("source_cvd", nullable=True),
        sa.Column("source_snapshot", sa.String(length=64), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("apps", sa.JSON(), nullable=False),
    )
    cols.create_index("layer_versions", "layer_id")
    create_cvd_layer_list("cvd_layers")
    create_cvd_layer_list("cvd_running_layers")
    op.create_table(
        "recordings",
        cols.uuid("cvd_id"),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("start_snapshot", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=True),
        cols.uuid("update_layer", nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        cols.timestamp("started"),
        cols.foreign_key("recordings", "cvd_id", "cvds.id", ondelete="CASCADE"),
        cols.primary_key("recordings", "cvd_id"),
    )


def downgrade() -> None:
    op.drop_table("recordings")
    op.drop_table("cvd_running_layers")
    op.drop_table("cvd_layers")
    cols.drop_index("layer_versions", "layer_id")
    op.drop_table("layer_versions")
    op.drop_table("layers")
