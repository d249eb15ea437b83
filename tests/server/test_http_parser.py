"""The server parses HTTP with httptools (C), not h11 (pure Python): a server dependency."""

from __future__ import annotations

from typing import Any

from uvicorn.config import Config


async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover (never called)
    raise AssertionError("not served")


def test_uvicorn_as_the_server_runs_it_picks_the_httptools_parser() -> None:
    # `lamina server` leaves uvicorn's `http` at "auto", which takes httptools when it
    # is installed: the "server" extra must bring it.
    config = Config(_app, log_config=None)
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
