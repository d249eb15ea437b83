"""srvsql: a claim's lease is its CVD's (``blob_claimants``, one row per CVD uploading);
``blob_claims`` is (blob_id, cvd_id) in one b-tree (WITHOUT ROWID on SQLite), without
``expires``, its index or a foreign key

Create Date: 2026-12-01 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lamina.db.migrations import columns as cols

revision = "0013_srvsql"
down_revision = "0012_srvcpu"

_KEY = ("blob_id", "cvd_id")


def _claims_table(name: str, *extra: sa.schema.SchemaItem, rowid: bool) -> None:
    op.create_table(
        name,
        sa.Column("blob_id", sa.LargeBinary(length=32), nullable=False),
        cols.uuid("cvd_id"),
        *extra,
        cols.primary_key("blob_claims", *_KEY),
        sqlite_with_rowid=rowid,
    )


def upgrade() -> None:
    op.create_table(
        "blob_claimants",
        cols.uuid("cvd_id"),
        cols.timestamp("expires"),
        cols.foreign_key("blob_claimants", "cvd_id", "cvds.id", ondelete="CASCADE"),
        cols.primary_key("blob_claimants", "cvd_id"),
    )
    claims = sa.table("blob_claims", *map(sa.column, (*_KEY, "expires")))
    # each CVD's lease: the latest of its claims' (claims are soft state: a lease a
    # little longer than one of them had costs a re-ask, never an answer)
    op.execute(
        sa.table("blob_claimants", sa.column("cvd_id"), sa.column("expires"))
        .insert()
        .from_select(
            ["cvd_id", "expires"],
            sa.select(claims.c.cvd_id, sa.func.max(claims.c.expires)).group_by(claims.c.cvd_id),
        )
    )
    cols.drop_index("blob_claims", "expires")
    if op.get_context().dialect.name == "sqlite":
        _claims_table("blob_claims_new", rowid=False)
        new = sa.table("blob_claims_new", *map(sa.column, _KEY))
        key = [claims.c[name] for name in _KEY]
        op.execute(new.insert().from_select(list(_KEY), sa.select(*key).order_by(*key)))
        op.drop_table("blob_claims")
        op.rename_table("blob_claims_new", "blob_claims")
    else:
        op.drop_constraint("fk_blob_claims_cvd_id_cvds", "blob_claims", type_="foreignkey")
        op.drop_column("blob_claims", "expires")


def downgrade() -> None:
    claimants = sa.table("blob_claimants", sa.column("cvd_id"), sa.column("expires"))
    claims = sa.table("blob_claims", *map(sa.column, _KEY))
    # a claim without its CVD's lease (or its CVD) was dead: it goes
    live = (
        sa.select(claims.c.blob_id, claims.c.cvd_id, claimants.c.expires)
        .join(claimants, claimants.c.cvd_id == claims.c.cvd_id)
        .order_by(claims.c.blob_id, claims.c.cvd_id)
    )
    if op.get_context().dialect.name == "sqlite":
        _claims_table(
            "blob_claims_old",
            cols.timestamp("expires"),
            cols.foreign_key("blob_claims", "cvd_id", "cvds.id", ondelete="CASCADE"),
            rowid=True,
        )
        old = sa.table("blob_claims_old", *map(sa.column, (*_KEY, "expires")))
        op.execute(old.insert().from_select([*_KEY, "expires"], live))
        op.drop_table("blob_claims")
        op.rename_table("blob_claims_old", "blob_claims")
    else:
        op.add_column("blob_claims", cols.timestamp("expires", nullable=True))
        op.execute(
            "UPDATE blob_claims SET expires = (SELECT k.expires FROM blob_claimants k "
            "WHERE k.cvd_id = blob_claims.cvd_id)"
        )
        op.execute("DELETE FROM blob_claims WHERE expires IS NULL")
        op.alter_column("blob_claims", "expires", nullable=False)
        op.create_foreign_key(
            "fk_blob_claims_cvd_id_cvds",
            "blob_claims",
            "cvds",
            ["cvd_id"],
            ["id"],
            ondelete="CASCADE",
        )
    cols.create_index("blob_claims", "expires")
    op.drop_table("blob_claimants")
