from __future__ import annotations

import datetime as dt

from lamina.store.catalog import SnapshotRecord
from lamina.store.retention import Retention, apply_retention

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _snaps(hours: list[float]) -> list[SnapshotRecord]:
    return [
        SnapshotRecord(f"{i:04x}", T0 + dt.timedelta(hours=h), "s", b"\0" * 32, 0, 0)
        for i, h in enumerate(hours)
    ]


def test_keep_last_only() -> None:
    keep, forget = apply_retention(_snaps([0, 1, 2, 3]), Retention(keep_last=2))
    assert [s.id for s in keep] == ["0002", "0003"] and [s.id for s in forget] == ["0000", "0001"]


def test_hourly_and_daily_tiers() -> None:
    # Every 20 minutes for 3 days.
    snaps = _snaps([i / 3 for i in range(3 * 24 * 3)])
    keep, forget = apply_retention(snaps, Retention(keep_last=1, keep_hourly=5, keep_daily=3))
    newest = snaps[-1]
    assert newest in keep
    hours = {(s.time.day, s.time.hour) for s in keep}
    days = {s.time.day for s in keep}
    assert len(days) == 3
    assert len(hours) <= 5 + 3
    assert len(keep) + len(forget) == len(snaps)
    # Within one hour bucket only the newest is kept by the hourly tier.
    last_hour = [
        s for s in snaps if (s.time.day, s.time.hour) == (newest.time.day, newest.time.hour)
    ]
    assert [s for s in last_hour if s in keep] == [newest]


def test_newest_always_kept() -> None:
    keep, _ = apply_retention(_snaps([5, 1, 3]), Retention(keep_last=0))
    assert [s.id for s in keep] == ["0000"]
