"""What ``lamina server`` does between opening its store and serving."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from lamina.cli import server as server_cli
from lamina.config import ServerSettings


@pytest.fixture(autouse=True)
def _collector_as_it_was() -> Iterator[None]:
    """``_serve`` sets the collector's thresholds for the process: put them back."""
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_the_server_freezes_its_start_up_objects_out_of_the_collector_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The modules, the app, its schemas and tables live as long as the process: the
    # cyclic collector's full passes must not scan them again and again under load.
    frozen: list[int] = []

    def run(app: Any, **kw: Any) -> None:
        frozen.append(gc.get_freeze_count())

    monkeypatch.setattr(uvicorn, "run", run)
    assert gc.get_freeze_count() == 0
    settings = ServerSettings(data=tmp_path / "data", admin_password="a-long-test-password")
    try:
        server_cli._serve(settings, self_signed=False)
    finally:
        gc.unfreeze()
    assert frozen and frozen[0] > 10_000


def test_the_server_collects_its_youngest_objects_every_ten_thousand_allocations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sync allocates a few objects per blob id and tree entry and frees nearly all of
    # them by reference counting: at the interpreter's 700, the collector's passes found
    # next to nothing, and the full ones among them walked every decoded tree kept for
    # its commit (a 100,000-file first sync: 5.08 -> 4.81 s of replayed server CPU).
    seen: list[tuple[int, ...]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.append(gc.get_threshold()))
    before = gc.get_threshold()
    settings = ServerSettings(data=tmp_path / "data", admin_password="a-long-test-password")
    try:
        server_cli._serve(settings, self_signed=False)
    finally:
        gc.unfreeze()
    assert seen == [(server_cli.YOUNG_THRESHOLD, *before[1:])]
    assert server_cli.YOUNG_THRESHOLD == 10_000 > before[0]


def test_the_server_keeps_idle_connections_longer_than_its_clients_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With equal idle times (uvicorn's and httpx's defaults are both 5 s), a client that
    # reuses a connection just as the server closes it gets a dropped request.
    import httpx

    options: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: options.append(kw))
    settings = ServerSettings(data=tmp_path / "data", admin_password="a-long-test-password")
    try:
        server_cli._serve(settings, self_signed=False)
    finally:
        gc.unfreeze()
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert options[0]["timeout_keep_alive"] >= 10 * client_expiry


@pytest.mark.parametrize("verbose", [False, True])
def test_the_server_writes_a_line_per_request_only_when_verbose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verbose: bool
) -> None:
    # uvicorn sets its access logger to the level it is given (the root's, INFO): without
    # ``access_log`` off, every poll, bundle and commit cost a formatted line on stderr.
    import logging

    from lamina.cli.logs import setup_logging

    logs: list[bool] = []

    def run(app: Any, **kw: Any) -> None:
        uvicorn.Config(app, **kw).configure_logging()  # as uvicorn.run does
        access = logging.getLogger("uvicorn.access")
        # uvicorn's HTTP protocols log a request when the logger has a handler
        logs.append(access.hasHandlers() and access.isEnabledFor(logging.INFO))

    monkeypatch.setattr(uvicorn, "run", run)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    settings = ServerSettings(data=tmp_path / "data", admin_password="a-long-test-password")
    try:
        setup_logging("text", "info", verbose=verbose)
        server_cli._serve(settings, self_signed=False)
    finally:
        gc.unfreeze()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.setLevel(saved[0])
        for h in saved[1]:
            root.addHandler(h)
        access = logging.getLogger("uvicorn.access")
        access.handlers.clear()
        access.propagate = True
    assert logs == [verbose]
