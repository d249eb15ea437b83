"""``agent.throttle.Throttled``: at most one call a period, and none held back lost."""

from __future__ import annotations

from collections.abc import Callable

import pytest

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


class _Done:
    """A call made at once, on the caller's thread (the older tests' view)."""

    def join(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False


def _at_once(fn: Callable[[], None]) -> _Done:
    fn()
    return _Done()


def test_a_call_held_back_is_made_once_the_period_allows_with_the_latest_state() -> None:
    now, state, sent = [0.0], ["a"], []
    later = _Later()
    report = Throttled(lambda: sent.append(state[0]), 1.0, lambda: now[0], later, _at_once)
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


def test_with_a_quiet_start_the_first_call_waits_a_period_and_a_short_task_makes_none() -> None:
    now, state, sent = [5.0], ["a"], []
    later = _Later()
    report = Throttled(
        lambda: sent.append(state[0]), 1.0, lambda: now[0], later, _at_once, quiet_start=True
    )
    now[0] = 5.3
    report()  # held back: due a period after the start, not made now
    assert sent == [] and len(later.due) == 1 and abs(later.due[0][0] - 0.7) < 1e-9
    report.settle()  # the task ended before the period: no call at all
    assert later.cancelled == 1 and sent == []
    longer = Throttled(
        lambda: sent.append(state[0]), 1.0, lambda: now[0], later, _at_once, quiet_start=True
    )
    now[0], state[0] = 5.4, "b"
    longer()
    now[0], state[0] = 6.4, "c"
    later.due[-1][1]()  # a longer task: its progress is shown a period in, the latest
    assert sent == ["c"]


def test_settle_cancels_a_call_held_back() -> None:
    now, sent = [0.0], []
    later = _Later()
    report = Throttled(lambda: sent.append(1), 1.0, lambda: now[0], later, _at_once)
    report()
    now[0] = 0.2
    report()
    report.settle()
    assert later.cancelled == 1
    later.due[0][1]()  # a timer that fired as it was cancelled sends nothing
    assert sent == [1]


class _Now:
    """Calls the test starts by hand: each is held until ``run``."""

    def __init__(self) -> None:
        self.started: list[Callable[[], None]] = []
        self.joined = 0

    def __call__(self, fn: Callable[[], None]) -> _Now:
        self.started.append(fn)
        return self

    def run(self) -> None:
        self.started.pop(0)()

    def join(self) -> None:
        self.joined += 1
        while self.started:
            self.run()

    def is_alive(self) -> bool:
        return bool(self.started)


def test_a_call_the_limit_allows_is_made_off_the_callers_thread_and_settle_waits_for_it() -> None:
    """The caller (the scan's thread) never makes the call itself: it is started on its
    own thread; ``settle`` (before the commit) waits for it rather than dropping it."""
    now, sent = [0.0], []
    later, start = _Later(), _Now()
    report = Throttled(lambda: sent.append(now[0]), 1.0, lambda: now[0], later, start)
    report()
    assert sent == [] and len(start.started) == 1  # started, not made by the caller
    start.run()
    assert sent == [0.0]
    now[0] = 2.0
    report()
    report.settle()
    assert sent == [0.0, 2.0] and start.joined >= 1 and not later.due


def test_calls_allowed_while_one_is_made_are_made_once_more_by_its_thread() -> None:
    """A server that answers slowly: the calls the limit allows meanwhile start no thread
    each (they would pile up, and ``settle`` would wait for every one); the thread making
    the slow call makes one more when it ends, with the latest state."""
    now, state, sent = [0.0], ["a"], []
    later, start = _Later(), _Now()
    report = Throttled(lambda: sent.append(state[0]), 1.0, lambda: now[0], later, start)
    report()
    for t in range(1, 120):  # a call a second while the first is still being made
        now[0], state[0] = float(t), f"s{t}"
        report()
    assert len(start.started) == 1 and not later.due
    start.run()
    assert sent == ["s119", "s119"]  # the first call (made now: the latest state), one more
    now[0] = 119.5
    report()  # within the period of the call made last: held back, not started
    assert len(start.started) == 0 and len(later.due) == 1


def test_a_call_that_fails_does_not_stop_the_next_one() -> None:
    now, sent = [0.0], []
    later, start = _Later(), _Now()

    def send() -> None:
        sent.append(now[0])
        if len(sent) == 1:
            raise OSError("status file not written")

    report = Throttled(send, 1.0, lambda: now[0], later, start)
    report()
    with pytest.raises(OSError):
        start.run()
    now[0] = 2.0
    report()
    assert len(start.started) == 1  # a new thread: the failed one no longer counts as busy
    start.run()
    assert sent == [0.0, 2.0]
