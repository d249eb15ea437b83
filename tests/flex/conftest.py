"""The flex server tests' ``live``: a server of the test's own, reached patiently."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.config import ServerSettings
from tests.flex.server_live import PatientLive
from tests.server.conftest import ADMIN_PASSWORD, free_port, serve_live


@pytest.fixture
def live(tmp_path: Path) -> Iterator[PatientLive]:
    """A server of this test's own (no worker processes), reached patiently."""
    settings = ServerSettings(
        data=tmp_path / "data", port=free_port(), admin_password=ADMIN_PASSWORD, workers=0
    )
    yield from serve_live(settings, PatientLive)
