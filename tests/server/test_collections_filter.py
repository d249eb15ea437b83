"""server/services/collections.py: parse_filter and matches (pure, no database)."""

from __future__ import annotations

import pytest

from lamina.errors import UsageError
from lamina.server.services.collections import matches, parse_filter


def test_parse_filter() -> None:
    assert parse_filter("os_release.ID=debian, vendor=Dell* ,hostname!=lab-*") == [
        ("os_release.ID", True, "debian"),
        ("vendor", True, "Dell*"),
        ("hostname", False, "lab-*"),
    ]
    assert parse_filter("") == [] and parse_filter(" , ") == []
    for bad in ("no operator", "=x", "a b=c", "x!y"):
        with pytest.raises(UsageError, match="FIELD=GLOB"):
            parse_filter(bad)


def test_matches_nested_fields_and_negation() -> None:
    facts = {"os_release": {"ID": "debian"}, "vendor": "Dell Inc.", "hostname": "pc-1"}
    assert matches(parse_filter("os_release.ID=debian,vendor=Dell*"), facts)
    assert not matches(parse_filter("hostname!=pc-*"), facts)
    assert matches(parse_filter("missing.field="), facts)  # absent reads as ""
    assert not matches(parse_filter("os_release.ID=DEBIAN"), facts)  # case matters
    assert matches([], facts)
