"""The row protocols of ``services/rows.py`` stay in step with the tables they describe."""

from __future__ import annotations

import pytest
from sqlalchemy import Table

from lamina.db import models
from lamina.server.services import rows

TABLES: dict[type, Table] = {
    rows.User: models.users,
    rows.AuditEntry: models.audit_log,
    rows.Group: models.user_groups,
    rows.Policy: models.policies,
    rows.Device: models.devices,
    rows.Cvd: models.cvds,
    rows.Task: models.tasks,
    rows.Layer: models.layers,
    rows.LayerVersion: models.layer_versions,
    rows.Recording: models.recordings,
    rows.Collection: models.collections,
    rows.DriverProfile: models.driver_profiles,
    rows.FlexImage: models.flex_images,
    rows.FlexImageVersion: models.flex_image_versions,
    rows.FlexPolicy: models.flex_policies,
    rows.FlexEntitlement: models.flex_entitlements,
    rows.FlexInstance: models.flex_instances,
}


@pytest.mark.parametrize("proto", list(TABLES), ids=lambda p: p.__name__)
def test_a_row_protocol_names_its_tables_columns_with_their_nullability(proto: type) -> None:
    table = TABLES[proto]
    declared: dict[str, str] = proto.__annotations__  # strings: the module defers them
    assert declared, proto
    for name, annotation in declared.items():
        assert name in table.c, f"{proto.__name__}.{name} is no column of {table.name}"
        optional = annotation.endswith("| None")
        assert optional == bool(table.c[name].nullable), (
            f"{proto.__name__}.{name}: {annotation!r}, but the column is "
            f"{'nullable' if table.c[name].nullable else 'NOT NULL'}"
        )


def test_every_table_protocol_is_checked() -> None:
    """A protocol added to rows.py for a table gets a row in ``TABLES`` above."""
    views = {rows.Named, rows.FlexInstanceView}  # a shape across tables; a join
    defined = {
        v
        for v in vars(rows).values()
        if isinstance(v, type)
        and getattr(v, "_is_protocol", False)
        and v.__module__ == rows.__name__
    }
    assert defined - views == set(TABLES)
