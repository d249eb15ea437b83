"""``services/common.py``: the row-to-view builder every service's public views go through."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from lamina.server.services.common import from_row


class View(BaseModel):
    id: str
    created: dt.datetime
    seen: dt.datetime | None
    owner: str
    size: int = 0


def test_a_view_takes_the_rows_same_named_columns_and_makes_its_times_aware() -> None:
    naive = dt.datetime(2026, 1, 2, 3, 4, 5)  # as SQLite reads a time back
    row = SimpleNamespace(id="a", created=naive, seen=None, owner_id="u1", size=7, extra="x")
    v = from_row(View, row, owner="alice")
    assert v == View(id="a", created=naive.replace(tzinfo=dt.UTC), seen=None, owner="alice", size=7)
    assert v.model_dump_json().count("Z") == 1  # the JSON says UTC, as the typed routes write it


def test_a_given_value_wins_over_the_rows_column_and_a_missing_one_keeps_its_default() -> None:
    row = SimpleNamespace(id="a", created=dt.datetime.now(dt.UTC), seen=None, owner="bob")
    assert from_row(View, row, owner="carol").owner == "carol"
    assert from_row(View, row).size == 0


def test_a_value_given_for_no_field_is_refused() -> None:
    row = SimpleNamespace(id="a", created=dt.datetime.now(dt.UTC), seen=None, owner="bob")
    with pytest.raises(TypeError, match="View has no field ownr"):
        from_row(View, row, ownr="carol")
