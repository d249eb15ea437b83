"""``agent.throttle.Throttled``: at most one call a period, and none held back lost."""

from __future__ import annotations

from collections.abc import Callable

from lamina.agent.throttle import Throttled


class _Later:
    """Timers the test runs by hand (no waiting, no thread)."""

    def __init__(self) -> None:
        self.due: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def __call__(self, wait: float, fn: Callable[[], None]) -> _Later:
        self.due.append((wait, fn))
        return self

    def cancel(self) -> None:
        self.cancelled += 1


def test_a_call_held_back_is_made_once_the_period_allows_with_the_latest_state() -> None:
    now, state, sent = [0.0], ["a"], []
    later = _Later()
    report = Throttled(lambda: sent.append(state[0]), 1.0, lambda: now[0], later)
    report()
    assert sent == ["a"]
    now[0], state[0] = 0.4, "b"
    report()  # held back: one timer, due when the period ends
    now[0], state[0] = 0.6, "c"
    report()  # still held back: no second timer
    assert sent == ["a"] and len(later.due) == 1 and abs(later.due[0][0] - 0.6) < 1e-9
    now[0] = 1.0
    later.due[0][1]()  # the timer: the latest state goes, not the one held back first
    assert sent == ["a", "c"]
    now[0] = 1.5
    report()  # a period from the timer's call
    assert sent == ["a", "c"] and len(later.due) == 2


def test_settle_cancels_a_call_held_back() -> None:
    now, sent = [0.0], []
    later = _Later()
    report = Throttled(lambda: sent.append(1), 1.0, lambda: now[0], later)
    report()
    now[0] = 0.2
    report()
    report.settle()
    assert later.cancelled == 1
    later.due[0][1]()  # a timer that fired as it was cancelled sends nothing
    assert sent == [1]
