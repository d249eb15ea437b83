"""flex: groups, images and versions, policies, entitlements, instances

Create Date: 2026-11-30 06:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0008_flexsrv"
down_revision = "0008_drivers"

#: flex_instances' indexed columns
INSTANCE_INDEXES = ("entitlement_id", "user_id", "enroll_token_id")


def upgrade() -> None:
    cols.create_named_table("user_groups")
    cols.create_link_table(
        "user_group_members", ("group_id", "user_groups.id"), ("user_id", "users.id")
    )
    cols.create_named_table("flex_images")
    cols.create_versions_table(
        "flex_image_versions",
        "image_id",
        "flex_images.id",
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("firmware", sa.String(8), nullable=False),
        sa.Column("snapshot_id", sa.String(64), nullable=False),
        sa.Column("pieces", sa.JSON(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
    )
    cols.create_named_table(
        "flex_policies",
        sa.Column("restrictions", sa.JSON(), nullable=False),
        cols.timestamp("expires_at", nullable=True),
        sa.Column("valid_for", sa.Integer(), nullable=True),
        sa.Column("lease_seconds", sa.Integer(), nullable=False),
        updated=True,
    )
    cols.create_named_table(
        "flex_entitlements",
        cols.uuid("image_id"),
        sa.Column("version", sa.Integer(), nullable=True),
        cols.uuid("policy_id"),
        sa.Column("manage", sa.Boolean(), nullable=False),
        cols.uuid("cvd_policy_id", nullable=True),
        sa.Column("layers", sa.JSON(), nullable=False),
        cols.foreign_key("flex_entitlements", "image_id", "flex_images.id"),
        cols.foreign_key("flex_entitlements", "policy_id", "flex_policies.id"),
        cols.foreign_key("flex_entitlements", "cvd_policy_id", "policies.id"),
    )
    op.create_table(
        "flex_entitlement_subjects",
        cols.uuid("entitlement_id"),
        sa.Column("kind", sa.String(8), nullable=False),
        cols.uuid("subject_id"),
        cols.foreign_key(
            "flex_entitlement_subjects",
            "entitlement_id",
            "flex_entitlements.id",
            ondelete="CASCADE",
        ),
        cols.primary_key("flex_entitlement_subjects", "entitlement_id", "kind", "subject_id"),
    )
    cols.create_uuid_table(
        "flex_instances",
        cols.uuid("entitlement_id"),
        cols.uuid("user_id"),
        cols.uuid("version_id"),
        cols.uuid("policy_id", nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("client", sa.String(255), nullable=False),
        cols.timestamp("created"),
        cols.timestamp("last_checkin", nullable=True),
        cols.uuid("enroll_token_id", nullable=True),
        cols.uuid("device_id", nullable=True),
        cols.foreign_key(
            "flex_instances", "entitlement_id", "flex_entitlements.id", ondelete="CASCADE"
        ),
        cols.foreign_key("flex_instances", "user_id", "users.id", ondelete="CASCADE"),
        cols.foreign_key("flex_instances", "version_id", "flex_image_versions.id"),
        cols.foreign_key("flex_instances", "policy_id", "flex_policies.id"),
    )
    for column in INSTANCE_INDEXES:
        cols.create_index("flex_instances", column)


def downgrade() -> None:
    for column in INSTANCE_INDEXES:
        cols.drop_index("flex_instances", column)
    for t in (
        "flex_instances",
        "flex_entitlement_subjects",
        "flex_entitlements",
        "flex_policies",
        "flex_image_versions",
        "flex_images",
        "user_group_members",
        "user_groups",
    ):
        op.drop_table(t)
