"""The bundle bodies a server holds in memory are bounded (``bundle_memory``): past the
budget a body is received into a file under DATA/intake, in full, and comes into memory
only when there is room; a slow sender holding the budget delays nobody's upload."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from lamina.config import ServerSettings
from lamina.errors import UsageError
from lamina.protocol.bundle import MEDIA_TYPE
from lamina.server.app import create_app
from lamina.server.limits import BodyBudget
from lamina.store.blob import BlobKind
from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve, wait_for

BUDGET = 256 * 1024
HEADERS = {"Content-Type": MEDIA_TYPE}


def incompressible(seed: int, size: int = 200 * 1024) -> bytes:
    return random.Random(seed).randbytes(size)


def spooled(data: Path) -> list[int]:
    """Sizes of the files this process holds open under DATA/intake (unnamed files)."""
    intake = f"{data / 'intake'}/"
    sizes = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(intake):
                sizes.append(os.fstat(int(fd)).st_size)
        except OSError:
            continue  # closed meanwhile
    return sizes


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Live, BodyBudget]]:
    settings = ServerSettings(
        data=tmp_path / "data",
        port=free_port(),
        admin_password=ADMIN_PASSWORD,
        bundle_memory=BUDGET,
    )
    app = create_app(settings)
    for url in serve(settings, app):
        live = Live(url, settings.data)
        live.device("warm-up").missing([])  # the application's per-process limits exist now
        try:
            yield live, app.state.access_limits.bodies
        finally:
            for c in live.clients:
                c.close()


def test_a_bundle_past_the_budget_waits_in_a_file_not_behind_a_slow_sender(
    server: tuple[Live, BodyBudget],
) -> None:
    live, budget = server
    slow, other = live.device("slow"), live.device("other")
    slow_body, slow_ids = slow.bundle([(BlobKind.DATA, incompressible(1))])
    body, ids = other.bundle(
        [(BlobKind.DATA, incompressible(2)), (BlobKind.DATA, incompressible(3))]
    )
    go = threading.Event()

    def trickle() -> Iterator[bytes]:
        yield slow_body[:1000]
        go.wait(120)
        yield slow_body[1000:]

    with ThreadPoolExecutor(2) as pool:
        try:
            # No length declared: weighed as the largest body, the whole budget.
            first = pool.submit(
                slow.client.post, "/agent/bundles", content=trickle(), headers=HEADERS
            )
            wait_for("the slow sender to hold the budget", lambda: budget.used == BUDGET)
            second = pool.submit(other.client.post, "/agent/bundles", content=body, headers=HEADERS)
            # received in full while the slow one still trickles, into a file, not memory
            wait_for("the second bundle in a file", lambda: spooled(live.data) == [len(body)])
            assert not second.done()  # and it waits for room before it is read in
            assert budget.used == BUDGET
        finally:
            go.set()
        assert first.result().status_code == 200, first.result().text
        assert second.result().status_code == 200, second.result().text
    assert slow.missing(slow_ids) == [] and other.missing(ids) == []  # both stored
    assert budget.used == 0
    assert spooled(live.data) == []


def test_bundles_within_the_budget_are_read_in_memory(server: tuple[Live, BodyBudget]) -> None:
    live, budget = server
    device = live.device("one")
    ids = device.upload([(BlobKind.DATA, incompressible(4, 1000))])
    assert device.missing(ids) == []
    assert budget.used == 0
    assert not (live.data / "intake").exists()  # nothing was ever put in a file


def test_budget_holds_wait_their_turn_and_give_back_when_cancelled() -> None:
    async def main() -> None:
        budget = BodyBudget(100)
        assert budget.weigh(10**9) == 100 and budget.weigh(0) == 1
        order: list[str] = []
        release = {name: anyio.Event() for name in "abc"}

        async def holder(name: str, weight: int) -> None:
            async with budget.hold(weight):
                order.append(name)
                await release[name].wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder, "a", 60)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(holder, "b", 60)  # does not fit beside a: waits
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(holder, "c", 30)  # would fit beside a, but b came first
            await anyio.wait_all_tasks_blocked()
            assert order == ["a"] and budget.used == 60
            assert not budget.try_take(1)  # nothing passes the waiting ones
            with anyio.CancelScope() as waiting:
                waiting.cancel()
                async with budget.hold(50):  # cancelled while it waits: takes nothing
                    raise AssertionError("entered a full budget")
            assert budget.used == 60
            release["a"].set()
            await anyio.wait_all_tasks_blocked()
            assert order == ["a", "b", "c"] and budget.used == 90  # in turn, both fit
            release["b"].set()
            release["c"].set()
        assert budget.used == 0 and budget.try_take(100)
        budget.give(100)

        with anyio.CancelScope() as scope:  # a holder cancelled inside its block gives back
            async with budget.hold(100):
                scope.cancel()
                await anyio.sleep(10)
        assert budget.used == 0

    anyio.run(main)


def test_a_waiting_hold_cancelled_lets_the_ones_behind_it_in() -> None:
    async def main() -> None:
        budget = BodyBudget(100)
        entered: list[str] = []
        budget.try_take(60)

        async def holder(name: str, weight: int) -> None:
            async with budget.hold(weight):
                entered.append(name)

        big = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancellable, big, budget, 80)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(holder, "small", 30)
            await anyio.wait_all_tasks_blocked()
            assert entered == []  # behind the big one
            big.cancel()
            await anyio.wait_all_tasks_blocked()
            assert entered == ["small"] and budget.used == 60
        budget.give(60)
        assert budget.used == 0

    anyio.run(main)


async def _cancellable(scope: anyio.CancelScope, budget: BodyBudget, weight: int) -> None:
    with scope:
        async with budget.hold(weight):
            raise AssertionError("entered past the budget")


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(UsageError):
        BodyBudget(0)
