"""The test harness itself: the heaviest modules are collected (so started) first, and a
server the tests start never outlives a failed start."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _weight, heavy_first


@dataclass
class FakeItem:
    """What ``heavy_first`` reads of a test: its module's path and its markers."""

    path: Path
    name: str
    markers: set[str] = field(default_factory=set)

    def get_closest_marker(self, name: str) -> Any:
        return pytest.mark.__getattr__(name) if name in self.markers else None


def test_heaviest_modules_first_whole_and_in_their_own_order() -> None:
    fast = Path("tests/store/test_fast.py")
    mixed = Path("tests/server/test_mixed.py")  # one e2e test: the module moves as a whole
    boot = Path("tests/vm/test_boot.py")
    e2e = Path("tests/e2e/test_flow.py")  # no marker: the folder says e2e
    items: list[Any] = [
        FakeItem(fast, "a"),
        FakeItem(mixed, "b"),
        FakeItem(mixed, "c", {"e2e"}),
        FakeItem(e2e, "d"),
        FakeItem(boot, "e", {"e2e", "slow"}),
        FakeItem(fast, "f"),
        FakeItem(boot, "g", {"e2e", "slow"}),
    ]
    heavy_first(items)
    assert [i.name for i in items] == ["e", "g", "b", "c", "d", "a", "f"]


def test_this_session_is_ordered_heaviest_first(request: pytest.FixtureRequest) -> None:
    """The hook is installed: whatever this run collected is in non-increasing weight
    by module (new tests included: the weight comes from markers and folders)."""
    items = request.session.items
    module_weight: dict[Path, int] = {}
    for item in items:
        module_weight[item.path] = min(module_weight.get(item.path, 2), _weight(item))
    weights = [module_weight[item.path] for item in items]
    assert weights == sorted(weights)
    assert request.node in items


def test_a_server_that_does_not_answer_in_time_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ServerProc.start`` gives up after STARTUP_TIMEOUT (here none at all): the process
    it started must not outlive it (a loaded box once kept such servers running)."""
    from tests.e2e import conftest as e2e

    monkeypatch.setattr(e2e, "STARTUP_TIMEOUT", 0.0)
    server = e2e.ServerProc(tmp_path / "server", [])
    with pytest.raises(RuntimeError, match="did not answer in 0 s"):
        server.start()
    assert server.proc is not None
    assert server.proc.poll() is not None
