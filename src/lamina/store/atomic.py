"""The one atomic file write: a temporary name, every byte written, fsync, rename,
fsync of the folder. A crash at any moment leaves the old file or the new one whole,
never half of one; the temporary file is removed on any error.

Used by the local backend's objects, the key file, the agent's state files, the CLI's
saved login and the server's TLS files.

A large file (``DIRECT_MIN`` bytes or more: a pack) is written around the page cache
(``O_DIRECT``) where the filesystem allows it, from a page-aligned buffer this module
reuses: copying a pack into fresh page-cache pages was the largest single cost of a
server's intake (docs/design.md, "The server's intake of bytes (session 15)"). Where
direct writes are refused, the same bytes go through the page cache; either way fsync
makes them durable before the rename.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from pathlib import Path

TMP_SUFFIX = ".tmp"
#: Files at least this large are written with ``O_DIRECT`` where the filesystem allows.
DIRECT_MIN = 1 << 20
#: Offsets, lengths and buffer addresses of direct writes are multiples of this.
DIRECT_ALIGN = 4096
#: ``os.O_DIRECT`` where the system has it (Linux); elsewhere large files go buffered.
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: What a filesystem or device answers when it does not take a direct write.
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP)
#: Idle aligned buffers kept for the next large write (each up to a pack and a bit).
_BUFFERS_KEPT = 2
#: Aligned buffers are made in steps of this (a pack of 8 or 16 MiB fits one of them).
_BUFFER_STEP = 1 << 20


class _AlignedBuffers:
    """Page-aligned buffers (anonymous maps), reused: a fresh one costs a page fault a
    page, which is what writing around the page cache saves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[mmap.mmap] = []

    def take(self, size: int) -> mmap.mmap:
        """The smallest idle buffer of at least ``size`` bytes, else a new one."""
        with self._lock:
            for i, buf in enumerate(self._idle):  # smallest first
                if len(buf) >= size:
                    return self._idle.pop(i)
        return mmap.mmap(-1, -(-size // _BUFFER_STEP) * _BUFFER_STEP)

    def give(self, buf: mmap.mmap) -> None:
        """Keep the ``_BUFFERS_KEPT`` largest idle buffers; close the others."""
        with self._lock:
            self._idle.append(buf)
            self._idle.sort(key=len)
            dropped = self._idle[:-_BUFFERS_KEPT]
            del self._idle[:-_BUFFERS_KEPT]
        for old in dropped:
            old.close()


_buffers = _AlignedBuffers()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False if the filesystem refuses it."""
    if not _O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError as e:
        if e.errno in _REFUSED:
            return False
        raise
    return True


def _write_large(fd: int, data: bytes) -> None:
    """Write ``data`` whole: its aligned head around the page cache where allowed, the
    rest (the tail, or all of it where direct writes are refused) through it."""
    head = len(data) // DIRECT_ALIGN * DIRECT_ALIGN
    done = 0
    if head and _set_direct(fd, True):
        buf = _buffers.take(head)
        try:
            with memoryview(buf) as view:  # released before the buffer is given back
                view[:head] = memoryview(data)[:head]
                while done < head:
                    try:
                        n = os.write(fd, view[done:head])
                    except OSError as e:
                        if e.errno not in _REFUSED:  # refused: e.g. a device with larger blocks
                            raise
                        break
                    done += n
                    if n % DIRECT_ALIGN:
                        break  # a short write off the alignment: the rest goes buffered
        finally:
            _buffers.give(buf)
        _set_direct(fd, False)
    _write_all(fd, memoryview(data)[done:])


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` (created with ``mode``) atomically and durably.

    ``exclusive``: never replace an existing file (``FileExistsError``), also when
    two writers race: the new file is linked into place, which fails if one is there.
    """
    tmp = path.with_name(f".{path.name}.{os.urandom(16).hex()}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            if len(data) >= DIRECT_MIN:
                _write_large(fd, data)
            else:
                _write_all(fd, data)
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
