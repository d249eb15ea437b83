"""The last enabled administrator stays, also when two administrators disable each other
at the same moment on PostgreSQL (READ COMMITTED: each would count the other still
enabled). The interleaving is made, not hoped for: the first disable is held open in its
transaction, the second runs until it waits for the first's locks (seen in
``pg_stat_activity``) or ends, and only then does the first commit."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, select, text, update

from lamina.db.engine import read_tx
from lamina.db.models import users as users_table
from lamina.errors import ConflictError
from lamina.protocol.schemas import UserCreate
from lamina.server.security import ROLES, Principal
from lamina.server.services import users
from tests.server.conftest import migrated, wait_for

ROOT = Principal("user", "u-root", "root", "administrator", ROLES["administrator"])


def _waiting_for_a_lock(engine: Engine) -> bool:
    with engine.connect() as c:
        n = c.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar_one()
    return bool(n)


@pytest.mark.e2e
def test_two_administrators_disabling_each_other_at_once_leave_one_enabled(
    pg_db_url: str,
) -> None:
    for engine in migrated(pg_db_url):
        for name in ("x", "y"):
            users.create_user(
                engine, ROOT, UserCreate(name=name, password="pass-word-123", role="administrator")
            )
        outcome: dict[str, object] = {}

        def disable_y() -> None:
            try:
                users.set_disabled(engine, ROOT, "y", True)
                outcome["y"] = "disabled"
            except ConflictError as e:
                outcome["y"] = e

        with engine.connect() as first:
            tx = first.begin()
            x = users._user(first, "x")
            users._keep_an_administrator(first, x, "disable")
            first.execute(update(users_table).where(users_table.c.id == x.id).values(disabled=True))
            other = threading.Thread(target=disable_y)
            other.start()
            wait_for(
                "the second disable to wait for the first one's locks, or to end",
                lambda: not other.is_alive() or _waiting_for_a_lock(engine),
            )
            tx.commit()
        other.join()
        assert isinstance(outcome["y"], ConflictError)
        assert "last enabled administrator" in str(outcome["y"])
        with read_tx(engine) as c:
            enabled = c.execute(select(users_table.c.name).where(~users_table.c.disabled)).scalars()
            assert set(enabled) == {"y"}
