"""Workers claim tasks atomically: on SQLite, and on PostgreSQL with many claimers at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from lamina.db.engine import make_engine, write_tx
from lamina.db.migrate import upgrade
from lamina.server.security import Principal
from lamina.server.services import tasks


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        f"sqlite:///{tmp_path / 'db.sqlite'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_db_url")
    )
    e = make_engine(url)
    upgrade(e)
    yield e
    e.dispose()


def test_each_task_is_claimed_exactly_once(engine: Engine) -> None:
    device = Principal("device", "dev-1", "device one")
    with write_tx(engine) as c:
        ids = {tasks.enqueue(c, "sync", "admin", device_id="dev-1") for _ in range(40)}
        tasks.enqueue(c, "sync", "admin", device_id="dev-2")  # another device's: never claimed here
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        got = tasks.claim_for_device(engine, device, f"worker-{n}")
        with lock:
            claimed.extend(w.task_id for w in got)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # all of them, none twice
    assert tasks.claim_for_device(engine, device, "late") == []
    admin = Principal("user", "u", "admin", "administrator", frozenset({"read"}))
    assert {t.state for t in tasks.list_tasks(engine, admin) if t.device_id == "dev-1"} == {
        "running"
    }


def test_a_task_cut_short_by_an_agent_restart_is_claimed_again(engine: Engine) -> None:
    device = Principal("device", "dev-9", "device nine")
    with write_tx(engine) as c:
        tid = tasks.enqueue(c, "restore", "admin", device_id="dev-9")
    assert [w.task_id for w in tasks.claim_for_device(engine, device, "first")] == [tid]
    # The agent died mid-task; when it asks for work again, the task comes back.
    assert tasks.claim_for_device(engine, device, "same process") == []
    assert [
        w.task_id for w in tasks.claim_for_device(engine, device, "second", restarted=True)
    ] == [tid]
