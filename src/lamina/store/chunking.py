"""The chunking secret: what a writer needs to cut and name chunks exactly as the store
does (the seed of the content-defined chunker, the key of the chunk ids, the sizes).

Kept apart from ``keys.py`` (the key file and its ciphers) so that what only carries
the secret, the agent's state file, loads no cipher.
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina.errors import StoreKeyError, UsageError

DEFAULT_MIN = 256 * 1024
DEFAULT_AVG = 1024 * 1024
DEFAULT_MAX = 4 * 1024 * 1024


@dataclass(frozen=True)
class ChunkingSecret:
    """What a writer needs to cut and name chunks exactly as the store does."""

    chunker_seed: int
    id_key: bytes
    min_size: int = DEFAULT_MIN
    avg_size: int = DEFAULT_AVG
    max_size: int = DEFAULT_MAX

    def __post_init__(self) -> None:
        if len(self.id_key) != 32:
            raise StoreKeyError("the id key must be 32 bytes")
        if not (64 <= self.min_size <= self.avg_size <= self.max_size <= 16 * 1024 * 1024):
            raise UsageError(
                f"chunk sizes must satisfy 64 <= min <= avg <= max <= 16 MiB, "
                f"got {self.min_size}/{self.avg_size}/{self.max_size}"
            )
