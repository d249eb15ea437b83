"""What every schema module shares: the strict base model, bounded client maps, id patterns."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Hex32 = Field(pattern=r"^[0-9a-f]{64}$")
#: What a device may call itself (RFC 1123 labels, plus ``_``): no spaces, no control characters.
HOSTNAME = r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,253}[A-Za-z0-9_])?$"

#: Bounds of a free-form map a client sends (progress, stats, result, facts): keys, JSON bytes.
MAX_MAP_KEYS = 256
MAX_MAP_BYTES = 128 * 1024


def _small_map(v: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(v, default=str))
    if size > MAX_MAP_BYTES:
        raise ValueError(f"is {size} bytes as JSON, above the {MAX_MAP_BYTES}-byte limit")
    return v


#: A map from a client, stored as it is: bounded in keys and in encoded size.
SmallMap = Annotated[dict[str, Any], Field(max_length=MAX_MAP_KEYS), AfterValidator(_small_map)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors ------------------------------------------------------------------
class ErrorPublic(BaseModel):
    code: str
    message: str
