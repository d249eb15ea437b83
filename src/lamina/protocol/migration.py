"""Migration and provisioning: a CVD laid onto another device, its own repaired one, or a
device's system laid down from layers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lamina.protocol.base import Strict

MigrationMode = Literal["full", "apps-data", "data"]


class MigrateRequest(Strict):
    """Lay a CVD onto another device (``cvd migrate``) or its own repaired one (``restore-system``)."""

    to: str = Field(max_length=255, description="The device (id or hostname) that gets the CVD.")
    mode: MigrationMode = "full"
    base: str | None = Field(None, max_length=255, description="Base layer NAME[:VERSION].")
    keep_base: bool = False
    name: str | None = Field(None, max_length=255, description="A new name for the CVD.")
    snapshot: str = Field("latest", max_length=64)
    dry_run: bool = Field(False, description="Only validate and report; change nothing.")
