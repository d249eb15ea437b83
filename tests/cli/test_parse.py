"""cli/common.parse_duration and cli/fleet.parse_rate (pure)."""

from __future__ import annotations

import pytest

from lamina.cli.common import parse_duration
from lamina.cli.fleet import parse_rate
from lamina.errors import UsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), (" 7d ", 604800), ("2w", 1209600), ("0s", 0)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "1", "h", "1.5h", "-1h", "1y", "1 h"])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(bad)


def test_parse_rate() -> None:
    assert parse_rate("500") == 500
    assert parse_rate("500K") == 500 * 1024 and parse_rate("10m") == 10 * 1024**2
    assert parse_rate("1G") == 1024**3
    with pytest.raises(UsageError, match="invalid rate"):
        parse_rate("fast")
