"""inflight: blobs other endpoints are uploading (claims with a lease), common blobs

Create Date: 2026-11-30 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0009_inflight"
down_revision = "0008_flexsrv"


def upgrade() -> None:
    cols.create_index("cvd_blobs", "blob_id")
    op.create_table(
        "blob_claims",
        sa.Column("blob_id", sa.LargeBinary(length=32), nullable=False),
        cols.uuid("cvd_id"),
        cols.timestamp("expires"),
        cols.foreign_key("blob_claims", "cvd_id", "cvds.id", ondelete="CASCADE"),
        cols.primary_key("blob_claims", "blob_id", "cvd_id"),
    )
    cols.create_index("blob_claims", "expires")
    op.create_table(
        "shared_blobs",
        sa.Column("blob_id", sa.LargeBinary(length=32), nullable=False),
        cols.primary_key("shared_blobs", "blob_id"),
    )


def downgrade() -> None:
    op.drop_table("shared_blobs")
    cols.drop_index("blob_claims", "expires")
    op.drop_table("blob_claims")
    cols.drop_index("cvd_blobs", "blob_id")
