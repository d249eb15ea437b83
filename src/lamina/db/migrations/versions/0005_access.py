"""access: revocation, enrollment token uses, login throttle by (name, client), CVD blob ownership

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as b:
        b.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="session")
        )
        b.add_column(sa.Column("last_used", sa.DateTime(timezone=True), nullable=True))
    # Tokens made before this revision allowed any number of enrollments: from now on
    # each allows one, so a token already used is exhausted (make a new one).
    with op.batch_alter_table("enroll_tokens") as b:
        b.add_column(sa.Column("max_uses", sa.Integer(), nullable=False, server_default="1"))
        b.add_column(sa.Column("revoked", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("cvds") as b:
        b.add_column(
            sa.Column("blobs_indexed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "cvd_blobs",
        sa.Column("cvd_id", sa.String(length=36), nullable=False),
        sa.Column("blob_id", sa.LargeBinary(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["cvd_id"], ["cvds.id"], name=op.f("fk_cvd_blobs_cvd_id_cvds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("cvd_id", "blob_id", name=op.f("pk_cvd_blobs")),
    )
    op.create_table(
        "login_throttle",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "client", name=op.f("pk_login_throttle")),
    )
    op.create_index(
        op.f("ix_login_throttle_last_failure"), "login_throttle", ["last_failure"], unique=False
    )
    op.drop_index("ix_login_failures_name", table_name="login_failures")
    op.drop_table("login_failures")


def downgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_login_failures"),
    )
    op.create_index("ix_login_failures_name", "login_failures", ["name"], unique=False)
    op.drop_index(op.f("ix_login_throttle_last_failure"), table_name="login_throttle")
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
