"""Agent syncs after the first report progress against the last snapshot's size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lamina.agent import runner
from lamina.agent.runner import Agent
from tests.server.conftest import Live, live  # noqa: F401  (the fixture)


def test_later_syncs_report_a_percentage(live: Live, tmp_path: Path) -> None:  # noqa: F811
    root, state = live.enrolled_agent(tmp_path, "progress-host")
    for i in range(3):
        (root / f"file{i}.bin").write_bytes(bytes([i]) * 200_000)
    seen: list[dict[str, Any]] = []
    agent = Agent(state, on_progress=seen.append)
    try:
        assert agent.cycle(force_sync=True)["synced"]
        first_total = agent.status.last_sync_stats.bytes  # type: ignore[union-attr]
        seen.clear()
        (root / "file0.bin").write_bytes(b"changed" * 50_000)
        assert agent.cycle(force_sync=True)["synced"]
    finally:
        agent.close()
    later = [p for p in seen if p.get("phase") == "syncing"]
    assert later, seen
    assert all(p.get("expected_bytes") == first_total for p in later)
    assert all(0 <= p["percent"] <= 99 for p in later)


def test_a_short_sync_sends_its_progress_to_no_one_but_the_status_file(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync over within ``PROGRESS_SECONDS`` (an unchanged one) posts no progress: two
    ``/agent/config`` requests (the cycle's report, the one after the sync), not three;
    the status file and the caller still see it. Decided by the threshold, not a clock."""
    root, state = live.enrolled_agent(tmp_path, "short-host")
    for i in range(3):
        (root / f"file{i}.bin").write_bytes(bytes([i]) * 200_000)
    seen: list[dict[str, Any]] = []
    agent = Agent(state, on_progress=seen.append)
    posted: list[str] = []
    real = agent.client.json

    def counting(method: str, path: str, **kw: Any) -> Any:
        posted.append(path)
        return real(method, path, **kw)

    monkeypatch.setattr(agent.client, "json", counting)
    try:
        counts = {}
        for name, seconds in (("short", 1e9), ("long", 0.0)):
            monkeypatch.setattr(runner, "PROGRESS_SECONDS", seconds)
            (root / "file0.bin").write_bytes(name.encode() * 50_000)  # an upload: progress
            posted.clear()
            seen.clear()
            assert agent.cycle(force_sync=True)["synced"]
            assert seen, name  # the status file and the CLI's bar got it either way
            counts[name] = posted.count("/agent/config")
    finally:
        agent.close()
    assert counts["short"] == 2
    assert counts["long"] > 2
