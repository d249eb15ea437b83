"""flex: groups, images and versions, policies, entitlements, instances

Revision ID: 0008_flexsrv
Revises: 0007
Create Date: 2026-11-30 06:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_flexsrv"
down_revision = "0008_drivers"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "user_groups",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_groups")),
        sa.UniqueConstraint("name", name=op.f("uq_user_groups_name")),
    )
    op.create_table(
        "user_group_members",
        sa.Column("group_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["user_groups.id"],
            name=op.f("fk_user_group_members_group_id_user_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_group_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "user_id", name=op.f("pk_user_group_members")),
    )
    op.create_table(
        "flex_images",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flex_images")),
        sa.UniqueConstraint("name", name=op.f("uq_flex_images_name")),
    )
    op.create_table(
        "flex_image_versions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("firmware", sa.String(8), nullable=False),
        sa.Column("snapshot_id", sa.String(64), nullable=False),
        sa.Column("pieces", sa.JSON(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["flex_images.id"],
            name=op.f("fk_flex_image_versions_image_id_flex_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flex_image_versions")),
        sa.UniqueConstraint("image_id", "version", name="uq_flex_image_versions_image_id_version"),
    )
    op.create_table(
        "flex_policies",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("restrictions", sa.JSON(), nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("valid_for", sa.Integer(), nullable=True),
        sa.Column("lease_seconds", sa.Integer(), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.Column("updated", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flex_policies")),
        sa.UniqueConstraint("name", name=op.f("uq_flex_policies_name")),
    )
    op.create_table(
        "flex_entitlements",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("policy_id", sa.String(36), nullable=False),
        sa.Column("manage", sa.Boolean(), nullable=False),
        sa.Column("cvd_policy_id", sa.String(36), nullable=True),
        sa.Column("layers", sa.JSON(), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["flex_images.id"], name=op.f("fk_flex_entitlements_image_id_flex_images")
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["flex_policies.id"],
            name=op.f("fk_flex_entitlements_policy_id_flex_policies"),
        ),
        sa.ForeignKeyConstraint(
            ["cvd_policy_id"],
            ["policies.id"],
            name=op.f("fk_flex_entitlements_cvd_policy_id_policies"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flex_entitlements")),
        sa.UniqueConstraint("name", name=op.f("uq_flex_entitlements_name")),
    )
    op.create_table(
        "flex_entitlement_subjects",
        sa.Column("entitlement_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("subject_id", sa.String(36), nullable=False),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["flex_entitlements.id"],
            name=op.f("fk_flex_entitlement_subjects_entitlement_id_flex_entitlements"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "entitlement_id", "kind", "subject_id", name=op.f("pk_flex_entitlement_subjects")
        ),
    )
    op.create_table(
        "flex_instances",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("entitlement_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("version_id", sa.String(36), nullable=False),
        sa.Column("policy_id", sa.String(36), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("client", sa.String(255), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.Column("last_checkin", TZ, nullable=True),
        sa.Column("enroll_token_id", sa.String(36), nullable=True),
        sa.Column("device_id", sa.String(36), nullable=True),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["flex_entitlements.id"],
            name=op.f("fk_flex_instances_entitlement_id_flex_entitlements"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_flex_instances_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["flex_image_versions.id"],
            name=op.f("fk_flex_instances_version_id_flex_image_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["flex_policies.id"],
            name=op.f("fk_flex_instances_policy_id_flex_policies"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flex_instances")),
    )
    for col in ("entitlement_id", "user_id", "enroll_token_id"):
        op.create_index(op.f(f"ix_flex_instances_{col}"), "flex_instances", [col], unique=False)


def downgrade() -> None:
    for col in ("entitlement_id", "user_id", "enroll_token_id"):
        op.drop_index(op.f(f"ix_flex_instances_{col}"), table_name="flex_instances")
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
