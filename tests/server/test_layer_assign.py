"""server/services/layer_assign.py: what an assignment is refused for before any plan is
made (the API route and the console form both go through it)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from lamina.errors import ForbiddenError, NotFoundError, UsageError
from lamina.server.security import ROLES, Principal
from lamina.server.services import collections, layers
from lamina.store.repository import Store

ADMIN = Principal("user", "a", "admin", "administrator", ROLES["administrator"])
READER = Principal("user", "r", "reader", "readonly", frozenset({"read"}))


def test_a_reader_is_refused_before_learning_whether_a_collection_exists(
    sqlite_engine: Engine, store: Store
) -> None:
    with pytest.raises(ForbiddenError):
        layers.assign(sqlite_engine, store, READER, [], None, ["viewer"], True, "no-such")
    with pytest.raises(NotFoundError, match="no-such"):
        layers.assign(sqlite_engine, store, ADMIN, [], None, ["viewer"], True, "no-such")


def test_an_assignment_names_a_cvd_or_a_collection_with_members(
    sqlite_engine: Engine, store: Store
) -> None:
    collections.create(sqlite_engine, ADMIN, "empty", "", [])
    with pytest.raises(UsageError, match="collection empty has no members"):
        layers.assign(sqlite_engine, store, ADMIN, [], None, ["viewer"], True, "empty")
    with pytest.raises(UsageError, match="name at least one CVD"):
        layers.assign(sqlite_engine, store, ADMIN, [], None, ["viewer"], True)
