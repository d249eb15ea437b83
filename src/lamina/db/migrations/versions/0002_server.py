"""server: users, tokens, audit, policies, enrollment, devices, cvds, tasks

Create Date: 2026-11-25 18:29:57.031697
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        cols.timestamp("time"),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        cols.primary_key("audit_log", "id"),
    )
    cols.create_uuid_table(
        "devices",
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("credential_hash", sa.String(length=64), nullable=False),
        cols.timestamp("enrolled"),
        cols.timestamp("last_seen", nullable=True),
        sa.Column("agent_state", sa.JSON(), nullable=False),
        cols.unique("devices", "credential_hash"),
    )
    cols.create_index("devices", "hostname")
    cols.create_login_failures()
    cols.create_named_table(
        "policies",
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        updated=True,
    )
    cols.create_uuid_table(
        "tasks",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        cols.uuid("cvd_id", nullable=True),
        cols.uuid("device_id", nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        cols.timestamp("created"),
        cols.timestamp("started", nullable=True),
        cols.timestamp("finished", nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
    )
    for column in ("cvd_id", "device_id", "state"):
        cols.create_index("tasks", column)
    cols.create_named_table(
        "users",
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
    )
    cols.create_uuid_table(
        "api_tokens",
        cols.uuid("user_id"),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        cols.timestamp("created"),
        cols.timestamp("expires", nullable=True),
        cols.foreign_key("api_tokens", "user_id", "users.id", ondelete="CASCADE"),
        cols.unique("api_tokens", "token_hash"),
    )
    cols.create_uuid_table(
        "cvds",
        sa.Column("name", sa.String(length=255), nullable=False),
        cols.uuid("device_id", nullable=True),
        cols.uuid("policy_id"),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("reference", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        cols.timestamp("created"),
        cols.timestamp("last_sync", nullable=True),
        sa.Column("progress", sa.JSON(), nullable=False),
        cols.foreign_key("cvds", "device_id", "devices.id"),
        cols.foreign_key("cvds", "policy_id", "policies.id"),
        cols.unique("cvds", "name"),
    )
    cols.create_index("cvds", "device_id")
    cols.create_uuid_table(
        "enroll_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        cols.timestamp("created"),
        cols.timestamp("expires"),
        cols.uuid("policy_id", nullable=True),
        sa.Column("reference", sa.Boolean(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        cols.foreign_key("enroll_tokens", "policy_id", "policies.id"),
        cols.unique("enroll_tokens", "token_hash"),
    )


def downgrade() -> None:
    op.drop_table("enroll_tokens")
    cols.drop_index("cvds", "device_id")
    op.drop_table("cvds")
    op.drop_table("api_tokens")
    op.drop_table("users")
    for column in ("state", "device_id", "cvd_id"):
        cols.drop_index("tasks", column)
    op.drop_table("tasks")
    op.drop_table("policies")
    cols.drop_index("login_failures", "name")
    op.drop_table("login_failures")
    cols.drop_index("devices", "hostname")
    op.drop_table("devices")
    op.drop_table("audit_log")
