"""Users' blob reads: one audit row per user per window, written before the first answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select

from lamina.db.models import audit_log
from lamina.server.security import Principal
from lamina.server.services.read_audit import RETRY, ReadAudit

HD = Principal(kind="user", id="u-hd", name="hd", role="helpdesk")


def _rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as c:
        q = select(audit_log).where(audit_log.c.action == "blob.read").order_by(audit_log.c.id)
        return [dict(r._mapping) for r in c.execute(q)]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        self.timers.append((delay, fn))


def test_reads_of_one_window_are_one_row_written_at_the_first_and_counted_at_the_close(
    sqlite_engine: Engine,
) -> None:
    clock = _Clock()
    reads = ReadAudit(sqlite_engine, window=60, clock=clock, schedule=clock.schedule)
    reads.read(HD, 3, 300)
    # The fact is in the database before the first answer leaves.
    (row,) = _rows(sqlite_engine)
    assert (row["actor"], row["target"]) == ("hd", "u-hd")
    assert row["detail"] == {"blobs": 3, "size": 300, "requests": 1}
    clock.now += 59
    reads.read(HD, 2, 50)
    reads.read(HD, 1, 7)
    assert [r["detail"] for r in _rows(sqlite_engine)] == [
        {"blobs": 3, "size": 300, "requests": 1}  # counted in memory until the window closes
    ]
    ((delay, close),) = clock.timers
    assert delay == 60
    close()  # the timer
    assert [r["detail"] for r in _rows(sqlite_engine)] == [{"blobs": 6, "size": 357, "requests": 3}]
    reads.read(HD, 1, 1)  # the window was closed: a new row
    assert len(_rows(sqlite_engine)) == 2


def test_a_read_after_the_window_closes_it_and_shutdown_writes_the_open_counts(
    sqlite_engine: Engine,
) -> None:
    clock = _Clock()
    reads = ReadAudit(sqlite_engine, window=60, clock=clock, schedule=clock.schedule)
    other = Principal(kind="user", id="u-ad", name="admin", role="administrator")
    reads.read(HD, 1, 10)
    reads.read(HD, 1, 10)
    reads.read(other, 5, 5)
    clock.now += 60  # the timer has not run yet: the next read closes the window itself
    reads.read(HD, 1, 20)
    assert [(r["actor"], r["detail"]) for r in _rows(sqlite_engine)] == [
        ("hd", {"blobs": 2, "size": 20, "requests": 2}),
        ("admin", {"blobs": 5, "size": 5, "requests": 1}),
        ("hd", {"blobs": 1, "size": 20, "requests": 1}),
    ]
    reads.read(HD, 4, 40)
    reads.close()  # the server stops
    assert _rows(sqlite_engine)[-1]["detail"] == {"blobs": 5, "size": 60, "requests": 2}
    for _, fn in clock.timers:  # late timers find their windows closed already
        fn()
    assert len(_rows(sqlite_engine)) == 3


def test_devices_reads_are_not_audit_rows(sqlite_engine: Engine) -> None:
    reads = ReadAudit(sqlite_engine, schedule=lambda delay, fn: None)
    reads.read(Principal(kind="device", id="d-1", name="desk-1", role="active"), 9, 900)
    assert _rows(sqlite_engine) == []


def test_counts_the_database_refused_at_the_close_are_written_at_the_retry(
    sqlite_engine: Engine,
) -> None:
    clock = _Clock()
    reads = ReadAudit(sqlite_engine, window=60, clock=clock, schedule=clock.schedule)
    reads.read(HD, 3, 300)
    reads.read(HD, 2, 50)
    with sqlite_engine.begin() as c:  # the table out of reach: every write to it fails
        c.exec_driver_sql("ALTER TABLE audit_log RENAME TO audit_log_away")
    clock.timers.pop()[1]()  # the close fails: logged, and tried again later
    with sqlite_engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE audit_log_away RENAME TO audit_log")
    ((delay, retry),) = clock.timers
    assert delay == RETRY
    retry()
    assert [r["detail"] for r in _rows(sqlite_engine)] == [{"blobs": 5, "size": 350, "requests": 2}]
    reads.read(HD, 1, 1)  # the window is closed now: the next read opens a new row
    assert len(_rows(sqlite_engine)) == 2
