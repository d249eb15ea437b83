"""console: device_match_facts, what driver profiles match, written with each device's facts

Existing devices are indexed on the first profile test after the upgrade
(``services.drivers_index.fill``): the migration itself does not read facts.

Create Date: 2026-11-30 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0010_console"
down_revision = "0009_inflight"


def upgrade() -> None:
    op.create_table(
        "device_match_facts",
        cols.uuid("device_id"),
        sa.Column("field", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        cols.foreign_key("device_match_facts", "device_id", "devices.id", ondelete="CASCADE"),
    )
    cols.create_index("device_match_facts", "device_id")
    op.create_index(
        "ix_device_match_facts_field_value",
        "device_match_facts",
        ["field", "value"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_device_match_facts_field_value", table_name="device_match_facts")
    cols.drop_index("device_match_facts", "device_id")
    op.drop_table("device_match_facts")
