"""A store on a local directory: atomic writes by temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from lamina.errors import BackendError, IntegrityError, NotFoundError, UsageError
from lamina.store.atomic import TMP_SUFFIX, fsync_dir, write_atomic


def _is_temp(name: str) -> bool:
    """A ``write_atomic`` temporary file (``.NAME.RANDOM.tmp``), not an object."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


class LocalBackend:
    """Objects are files below ``root``; a name's ``/`` are sub-directories."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)
        self._made_dirs: set[Path] = set()

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts) or "\0" in name:
            raise UsageError(f"invalid object name {name!r}")
        return self.root.joinpath(*parts)

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._made_dirs:
            return
        missing: list[Path] = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        for m in reversed(missing):
            with contextlib.suppress(FileExistsError):
                m.mkdir()
            fsync_dir(m.parent)
        if not missing:
            # Made by another thread (or process) that may not have synced its parent
            # yet: synced here, once, before the first object in it is acknowledged (a
            # power loss must not take a folder a durable pack was written into).
            fsync_dir(directory.parent)
        self._made_dirs.add(directory)

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self._ensure_dir(path.parent)
        try:
            write_atomic(path, data, 0o600)
        except OSError as e:
            raise BackendError(f"cannot write {name} in {self.root}: {e.strerror}") from e

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                if offset < 0:
                    f.seek(offset, os.SEEK_END)
                else:
                    f.seek(offset)
                data = f.read() if length is None else f.read(length)
        except FileNotFoundError as e:
            raise NotFoundError(f"object {name} not found in {self.root}") from e
        except OSError as e:
            if offset < 0:
                raise IntegrityError(f"object {name} is shorter than {-offset} bytes") from e
            raise BackendError(f"cannot read {name} in {self.root}: {e.strerror}") from e
        if length is not None and len(data) != length:
            raise IntegrityError(
                f"object {name} is truncated: wanted {length} bytes at {offset}, got {len(data)}"
            )
        return data

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError as e:
            raise NotFoundError(f"object {name} not found in {self.root}") from e

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        if not self.root.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for f in files:
                if _is_temp(f):
                    continue
                name = f if rel == "." else f"{rel}/{f}"
                if name.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        yield name, os.stat(os.path.join(dirpath, f)).st_size

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise BackendError(f"cannot delete {name} in {self.root}: {e.strerror}") from e
        fsync_dir(path.parent)

    def remove_stale_temps(self, before: float) -> int:
        """``write_atomic``'s temporary files (``.NAME.RANDOM.tmp``) left by a writer killed
        before its rename: no listing shows them, and nothing else removes them."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                if not _is_temp(f):
                    continue
                path = os.path.join(dirpath, f)
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(path).st_mtime < before:
                        os.unlink(path)
                        removed += 1
        return removed

    def close(self) -> None:
        self._made_dirs.clear()
