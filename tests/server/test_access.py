"""The per-device rate limit of /agent/missing and /blobs/read (review finding 7), on its own clock."""

from __future__ import annotations

import pytest

from lamina.errors import RateLimitedError
from lamina.server.deps import AccessLimits
from lamina.server.security import RateLimiter


def test_rate_limiter_spends_and_refills_per_key() -> None:
    t = [0.0]
    lim = RateLimiter(rate=10, burst=100, what="blob ids asked", clock=lambda: t[0])
    lim.take("device-1", 60)
    lim.take("device-1", 40)
    with pytest.raises(RateLimitedError) as e:
        lim.take("device-1", 1)
    assert "blob ids asked" in e.value.message and e.value.http_status == 429
    lim.take("device-2", 100)  # each device has its own bucket
    t[0] = 5.0  # 50 more
    lim.take("device-1", 50)
    with pytest.raises(RateLimitedError):
        lim.take("device-1", 1)
    t[0] = 1000.0  # never more than the burst
    with pytest.raises(RateLimitedError):
        lim.take("device-1", 101)
    lim.take("device-1", 100)


def test_the_device_routes_are_limited() -> None:
    limits = AccessLimits()
    # The review's guessing rate (100,000 ids in 0.35 s) cannot be sustained.
    for lim in (limits.missing, limits.reads):
        assert lim.rate < 100_000 / 0.35 and lim.burst < float("inf")
