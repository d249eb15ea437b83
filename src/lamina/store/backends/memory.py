"""An in-process backend for unit tests of one module (never for capability tests)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import ClassVar

from lamina.errors import IntegrityError, NotFoundError


class MemoryBackend:
    _named: ClassVar[dict[str, MemoryBackend]] = {}

    def __init__(self, name: str = "memory") -> None:
        self.url = f"memory://{name}"
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @classmethod
    def named(cls, name: str) -> MemoryBackend:
        if name not in cls._named:
            cls._named[name] = cls(name)
        return cls._named[name]

    def write(self, name: str, data: bytes) -> None:
        with self._lock:
            self.objects[name] = bytes(data)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            if name not in self.objects:
                raise NotFoundError(f"object {name} not found")
            data = self.objects[name]
        if offset < 0:
            if -offset > len(data):
                raise IntegrityError(f"object {name} is shorter than {-offset} bytes")
            offset = len(data) + offset
        out = data[offset:] if length is None else data[offset : offset + length]
        if length is not None and len(out) != length:
            raise IntegrityError(
                f"object {name} is truncated: wanted {length} bytes at {offset}, got {len(out)}"
            )
        return out

    def size(self, name: str) -> int:
        with self._lock:
            if name not in self.objects:
                raise NotFoundError(f"object {name} not found")
            return len(self.objects[name])

    def exists(self, name: str) -> bool:
        with self._lock:
            return name in self.objects

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        with self._lock:
            items = [(n, len(d)) for n, d in self.objects.items() if n.startswith(prefix)]
        yield from items

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(name, None)

    def remove_stale_temps(self, before: float) -> int:
        return 0  # (a write is one assignment)

    def close(self) -> None:
        pass
