"""The one atomic file write: a temporary name, every byte written, fsync, rename,
fsync of the folder. A crash at any moment leaves the old file or the new one whole,
never half of one; the temporary file is removed on any error.

Used by the local backend's objects, the key file, the agent's state files, the CLI's
saved login and the server's TLS files.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` (created with ``mode``) atomically and durably.

    ``exclusive``: never replace an existing file (``FileExistsError``), also when
    two writers race: the new file is linked into place, which fails if one is there.
    """
    tmp = path.with_name(f".{path.name}.{os.urandom(16).hex()}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
        else:
            os.rename(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # after a rename: already gone; after a link or an error: the temp
    fsync_dir(path.parent)
