"""The store's catalog: state, packs, blobs, snapshots.

Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "store_state",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        cols.primary_key("store_state", "key"),
    )
    op.create_table(
        "packs",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        cols.timestamp("created"),
        cols.primary_key("packs", "seq"),
        cols.unique("packs", "name"),
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
        cols.foreign_key("blobs", "pack_seq", "packs.seq", ondelete="CASCADE"),
        cols.primary_key("blobs", "id", "pack_seq"),
    )
    cols.create_index("blobs", "pack_seq")
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
        cols.timestamp("time"),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        cols.primary_key("snapshots", "seq"),
        cols.unique("snapshots", "id"),
    )
    cols.create_index("snapshots", "source")


def downgrade() -> None:
    op.drop_table("snapshots")
    op.drop_table("blobs")
    op.drop_table("packs")
    op.drop_table("store_state")
