"""The store's catalog: state, packs, blobs, snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_state",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_store_state"),
    )
    op.create_table(
        "packs",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_packs"),
        sa.UniqueConstraint("name", name="uq_packs_name"),
    )
    op.create_table(
        "blobs",
        sa.Column("id", sa.LargeBinary(32), nullable=False),
        sa.Column("pack_seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("raw_length", sa.Integer(), nullable=False),
        sa.Column("condemned", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pack_seq"], ["packs.seq"], name="fk_blobs_pack_seq_packs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", "pack_seq", name="pk_blobs"),
    )
    op.create_index("ix_blobs_pack_seq", "blobs", ["pack_seq"])
    op.create_index(
        "ix_blobs_condemned",
        "blobs",
        ["condemned"],
        postgresql_where=sa.text("condemned"),
        sqlite_where=sa.text("condemned"),
    )
    op.create_table(
        "snapshots",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_snapshots"),
        sa.UniqueConstraint("id", name="uq_snapshots_id"),
    )
    op.create_index("ix_snapshots_source", "snapshots", ["source"])


def downgrade() -> None:
    op.drop_table("snapshots")
    op.drop_table("blobs")
    op.drop_table("packs")
    op.drop_table("store_state")
