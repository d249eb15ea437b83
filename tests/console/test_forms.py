"""The console's shared form fields (``console/forms.py``) and the queries its views read."""

from __future__ import annotations

from lamina.server.console.forms import lines
from lamina.server.console.views_fleet import DeviceSearch


def test_lines_splits_on_newlines_and_commas_and_drops_blanks() -> None:
    assert lines(" alice, bob\r\n\n carol ,\n,") == ["alice", "bob", "carol"]
    assert lines("") == []


def test_the_device_lists_query_string_becomes_the_services_query() -> None:
    q = DeviceSearch(q=" host-1 ", state="offline", sort="last_seen", order="desc").query()
    assert (q.search, q.health, q.sort, q.descending, q.page, q.size) == (
        "host-1", "offline", "last_seen", True, 1, 50,
    )  # fmt: skip
    assert DeviceSearch().query().descending is False
