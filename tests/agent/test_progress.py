"""Agent syncs after the first report progress against the last snapshot's size."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lamina.agent import sync as sync_mod
from lamina.agent.runner import Agent
from lamina.errors import BackendError
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


def test_the_first_sync_counts_what_it_covers_beside_the_scan_not_before_it(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sync_mod, "PROGRESS_SECONDS", 0.0)
    root, state = live.enrolled_agent(tmp_path, "count-host")
    for i in range(3):
        (root / f"file{i}.bin").write_bytes(bytes([i + 1]) * 300_000)
    scanning = threading.Event()
    counted_while_scanning: list[bool] = []
    real_estimate = sync_mod.estimate

    class Watched(sync_mod.Scanner):
        def scan(self, root: Path) -> bytes:
            scanning.set()
            return super().scan(root)

    def estimate(*args: Any) -> tuple[int, int]:
        # The count waits for the scan: a sync that counted first would wait here in vain.
        counted_while_scanning.append(scanning.wait(timeout=30))
        return real_estimate(*args)

    monkeypatch.setattr(sync_mod, "Scanner", Watched)
    monkeypatch.setattr(sync_mod, "estimate", estimate)
    seen: list[dict[str, Any]] = []
    agent = Agent(state, on_progress=seen.append)
    try:
        assert agent.cycle(force_sync=True)["synced"]
    finally:
        agent.close()
    assert counted_while_scanning == [True]
    assert seen and all(p["phase"] == "centralizing" for p in seen), seen
    # Once counted, a report gives the tree's size and a percentage of it.
    files = [f for f in root.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    counted = [p for p in seen if "total_bytes" in p]
    assert counted, seen
    assert all(p["total_files"] == len(files) and p["total_bytes"] == size for p in counted)
    assert all(0 <= p["percent"] <= 99 for p in counted if p["bytes"]), seen


def test_a_failed_sync_stops_its_count_and_reports_nothing_after(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first sync whose scan fails while its count still walks: the count is stopped
    and waited for before the sync's error is raised, so it reports nothing afterwards
    (a report then showed a failed sync as "syncing" again)."""
    monkeypatch.setattr(sync_mod, "PROGRESS_SECONDS", 0.0)
    root, state = live.enrolled_agent(tmp_path, "failing-host")
    (root / "file.bin").write_bytes(b"x" * 1000)
    counting = threading.Event()

    def estimate(root: Path, exclude: Any, prune: Any, folder: Any) -> tuple[int, int]:
        counting.set()
        while True:  # a walk that goes on until the sync stops it (at its next folder)
            folder(b"")
            time.sleep(0.01)

    class Failing(sync_mod.Scanner):
        def scan(self, root: Path) -> bytes:
            assert counting.wait(timeout=30)
            raise BackendError("the disk went away")

    monkeypatch.setattr(sync_mod, "Scanner", Failing)
    monkeypatch.setattr(sync_mod, "estimate", estimate)
    seen: list[dict[str, Any]] = []
    agent = Agent(state, on_progress=seen.append)
    try:
        with pytest.raises(BackendError, match="disk went away"):
            agent.cycle(force_sync=True)
        reported = len(seen)
        assert not [t for t in threading.enumerate() if t.name == "lamina-count"]
        assert agent.status.state == "error"
    finally:
        agent.close()
    assert len(seen) == reported == 1  # the sync's start only
