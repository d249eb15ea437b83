"""console: device_match_facts, what driver profiles match, written with each device's facts

Existing devices are indexed on the first profile test after the upgrade
(``services.drivers_index.fill``): the migration itself does not read facts.

Revision ID: 0010_console
Revises: 0009_inflight
Create Date: 2026-11-30 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_console"
down_revision = "0009_inflight"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_match_facts",
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("field", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_match_facts_device_id_devices"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        op.f("ix_device_match_facts_device_id"), "device_match_facts", ["device_id"], unique=False
    )
    op.create_index(
        "ix_device_match_facts_field_value",
        "device_match_facts",
        ["field", "value"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_device_match_facts_field_value", table_name="device_match_facts")
    op.drop_index(op.f("ix_device_match_facts_device_id"), table_name="device_match_facts")
    op.drop_table("device_match_facts")
