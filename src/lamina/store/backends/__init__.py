"""Where pack files live: the ``Backend`` contract and the URL that picks one.

A backend stores named, immutable objects. Lamina writes each name once, with
content that never changes afterwards (a pack's name is the hash of its bytes),
so a backend need not handle concurrent writers of different content to one name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from lamina.errors import UsageError
from lamina.store.backends.local import LocalBackend
from lamina.store.backends.memory import MemoryBackend


class Backend(Protocol):
    """The contract every object store honours.

    - ``write`` is atomic: a reader sees the whole object or none of it, never a
      prefix, even if the process dies half-way. Writing the same name twice with
      the same bytes is harmless (idempotent).
    - ``read`` returns exactly the bytes asked for or raises ``NotFoundError`` /
      ``BackendError``; a short object raises ``IntegrityError`` rather than
      returning fewer bytes.
    - ``delete`` is idempotent: deleting a missing name is not an error.
    - A backend object may be shared between threads; each call is independent.
      After ``close`` it is unusable.
    """

    url: str

    def write(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` atomically and durably."""
        ...

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read ``length`` bytes at ``offset`` (everything from ``offset`` if None).

        A negative ``offset`` counts from the end (``length`` must then be None).
        """
        ...

    def size(self, name: str) -> int:
        """The size of the object, or ``NotFoundError``."""
        ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """Every (name, size) whose name starts with ``prefix``, in no set order."""
        ...

    def delete(self, name: str) -> None: ...

    def remove_stale_temps(self, before: float) -> int:
        """Remove the temporary files of writes that never finished (their writer killed
        before its rename) last changed before ``before`` (a Unix time); how many. A
        backend whose writes are atomic by themselves has none."""
        ...

    def close(self) -> None: ...


def open_backend(url: str) -> Backend:
    """Open the backend a store URL names.

    - ``/some/dir`` or ``file:///some/dir``: a local directory.
    - ``s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1``:
      any S3-compatible service; credentials come from the usual AWS variables
      (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) or the query string.
    - ``memory://NAME``: an in-process store for unit tests.
    """
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = parts.path if parts.scheme == "file" else url
        return LocalBackend(path)
    if parts.scheme == "s3":
        # Imported here, not at the top: boto3 costs ~300 ms of start-up that
        # every command on a local store would otherwise pay. Not a cycle.
        from lamina.store.backends.s3 import S3Backend

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return S3Backend(
            bucket=parts.netloc,
            prefix=parts.path.lstrip("/"),
            endpoint_url=query.get("endpoint"),
            region=query.get("region"),
            access_key=query.get("access_key"),
            secret_key=query.get("secret_key"),
        )
    if parts.scheme == "memory":
        return MemoryBackend.named(parts.netloc or "default")
    raise UsageError(
        f"unknown store URL scheme {parts.scheme!r} in {url!r} (use a path, file://, s3://)"
    )
