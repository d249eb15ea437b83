"""tasks.reported: when the report a task's row holds was made (its agent's report, as
the server that took it saw it), so a progress report kept a moment by one server is
never written over a newer one another server stored

Create Date: 2026-12-01 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_task_reported"
down_revision = "0010_console"


def upgrade() -> None:
    op.add_column("tasks", sa.Column("reported", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("reported")
