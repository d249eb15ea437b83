"""access: revocation, enrollment token uses, login throttle by (name, client), CVD blob ownership

Create Date: 2026-11-30 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as b:
        b.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="session")
        )
        b.add_column(cols.timestamp("last_used", nullable=True))
    # Tokens made before this revision allowed any number of enrollments: from now on
    # each allows one, so a token already used is exhausted (make a new one).
    with op.batch_alter_table("enroll_tokens") as b:
        b.add_column(sa.Column("max_uses", sa.Integer(), nullable=False, server_default="1"))
        b.add_column(cols.timestamp("revoked", nullable=True))
    with op.batch_alter_table("cvds") as b:
        b.add_column(
            sa.Column("blobs_indexed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "cvd_blobs",
        cols.uuid("cvd_id"),
        sa.Column("blob_id", sa.LargeBinary(length=32), nullable=False),
        cols.foreign_key("cvd_blobs", "cvd_id", "cvds.id", ondelete="CASCADE"),
        cols.primary_key("cvd_blobs", "cvd_id", "blob_id"),
    )
    op.create_table(
        "login_throttle",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        cols.timestamp("locked_until", nullable=True),
        cols.timestamp("last_failure"),
        cols.primary_key("login_throttle", "name", "client"),
    )
    cols.create_index("login_throttle", "last_failure")
    cols.drop_index("login_failures", "name")
    op.drop_table("login_failures")


def downgrade() -> None:
    cols.create_login_failures()
    cols.drop_index("login_throttle", "last_failure")
    op.drop_table("login_throttle")
    op.drop_table("cvd_blobs")
    with op.batch_alter_table("cvds") as b:
        b.drop_column("blobs_indexed")
    with op.batch_alter_table("enroll_tokens") as b:
        b.drop_column("revoked")
        b.drop_column("max_uses")
    with op.batch_alter_table("api_tokens") as b:
        b.drop_column("last_used")
        b.drop_column("kind")
