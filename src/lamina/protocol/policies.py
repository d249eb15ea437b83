"""CVD policies: what a policy decides (``PolicySettings``) and its API schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lamina.protocol.base import Strict

PathClass = Literal["system", "applications", "user_data", "machine_identity"]
PROTECTABLE: tuple[PathClass, ...] = ("system", "applications", "user_data", "machine_identity")


class PolicySettings(Strict):
    """What a CVD policy decides. Paths are globs on endpoint paths (``/home/**``)."""

    interval: int = Field(3600, ge=60, le=30 * 86400, description="Seconds between uploads.")
    keep_last: int = Field(3, ge=1, le=10000)
    keep_hourly: int = Field(24, ge=0, le=10000)
    keep_daily: int = Field(7, ge=0, le=10000)
    keep_weekly: int = Field(4, ge=0, le=10000)
    keep_monthly: int = Field(12, ge=0, le=10000)
    include: list[str] = Field(default_factory=lambda: ["/**"])
    exclude: list[str] = Field(default_factory=list)
    exceptions: list[str] = Field(default_factory=list, description="Re-included inside excludes.")
    classes: list[PathClass] = Field(
        default_factory=lambda: list(PROTECTABLE),
        description="Path classes to protect; the 'excluded' class is never uploaded.",
    )
    bandwidth_limit: int = Field(0, ge=0, description="Upload bytes per second, 0 for no limit.")


class PolicyCreate(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    settings: PolicySettings = Field(default_factory=PolicySettings)


class PolicyUpdate(Strict):
    settings: PolicySettings


class PolicyPublic(BaseModel):
    id: str
    name: str
    version: int
    settings: PolicySettings
    cvds: int
