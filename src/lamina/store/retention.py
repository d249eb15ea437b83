"""Which snapshots a retention policy keeps: the newest N, then one per hour/day/week/month.

Tiers count buckets, newest first: ``keep_daily=7`` keeps the newest snapshot
of each of the 7 most recent days that have one. A snapshot kept by any tier is
kept. The newest snapshot is always kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lamina.store.catalog import SnapshotRecord


@dataclass(frozen=True)
class Retention:
    keep_last: int = 1
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0


def _tiers(r: Retention) -> list[tuple[int, Callable[[dt.datetime], object]]]:
    return [
        (r.keep_hourly, lambda t: (t.year, t.month, t.day, t.hour)),
        (r.keep_daily, lambda t: (t.year, t.month, t.day)),
        (r.keep_weekly, lambda t: t.isocalendar()[:2]),
        (r.keep_monthly, lambda t: (t.year, t.month)),
    ]


def apply_retention(
    snaps: Sequence[SnapshotRecord], policy: Retention
) -> tuple[list[SnapshotRecord], list[SnapshotRecord]]:
    """``(keep, forget)``, each oldest first."""
    newest_first = sorted(snaps, key=lambda s: s.time, reverse=True)
    keep: set[str] = {s.id for s in newest_first[: max(policy.keep_last, 1)]}
    for count, bucket in _tiers(policy):
        seen: set[object] = set()
        for s in newest_first:
            if len(seen) >= count:
                break
            b = bucket(s.time.astimezone(dt.UTC))
            if b not in seen:
                seen.add(b)
                keep.add(s.id)
    ordered = sorted(snaps, key=lambda s: s.time)
    return [s for s in ordered if s.id in keep], [s for s in ordered if s.id not in keep]
