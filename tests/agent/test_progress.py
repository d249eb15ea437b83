"""Agent syncs after the first report progress against the last snapshot's size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lamina.agent import sync as sync_mod
from lamina.agent.runner import Agent
from tests.server.conftest import Live, live  # noqa: F401  (the fixture)


def test_later_syncs_report_a_percentage(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A sync shorter than the reports' period makes none (its first is due a period in):
    # with no period, this short one reports as a long one does.
    monkeypatch.setattr(sync_mod, "PROGRESS_SECONDS", 0.0)
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
