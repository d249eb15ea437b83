"""inflight: blobs other endpoints are uploading (claims with a lease), common blobs

Revision ID: 0009_inflight
Revises: 0008_flexsrv
Create Date: 2026-11-30 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_inflight"
down_revision = "0008_flexsrv"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_cvd_blobs_blob_id"), "cvd_blobs", ["blob_id"], unique=False)
    op.create_table(
        "blob_claims",
        sa.Column("blob_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("cvd_id", sa.String(length=36), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cvd_id"], ["cvds.id"], name=op.f("fk_blob_claims_cvd_id_cvds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("blob_id", "cvd_id", name=op.f("pk_blob_claims")),
    )
    op.create_index(op.f("ix_blob_claims_expires"), "blob_claims", ["expires"], unique=False)
    op.create_table(
        "shared_blobs",
        sa.Column("blob_id", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("blob_id", name=op.f("pk_shared_blobs")),
    )


def downgrade() -> None:
    op.drop_table("shared_blobs")
    op.drop_index(op.f("ix_blob_claims_expires"), table_name="blob_claims")
    op.drop_table("blob_claims")
    op.drop_index(op.f("ix_cvd_blobs_blob_id"), table_name="cvd_blobs")
