"""A restored file's content: written into a new file, or proved to be in place already.

A file already in place is kept only when it re-chunks (with the chunking secret)
to the tree's chunk ids; size and mtime alone prove nothing.
"""

from __future__ import annotations

import os
import stat
import threading

from lamina.errors import IntegrityError
from lamina.store import blob
from lamina.store.chunker import Chunker
from lamina.store.keys import ChunkingSecret
from lamina.tree.content import GetMany
from lamina.tree.extents import FileChangedError, chunk_fd
from lamina.tree.model import Entry

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def write_content(out: int, e: Entry, get_many: GetMany) -> None:
    """Write file ``e``'s content into the new, empty file ``out``: chunks in order, holes
    skipped (left sparse). Raises ``IntegrityError`` when the chunks do not add up to
    ``e.size``."""
    written = 0
    content = e.content or []
    data_iter = iter(get_many([c for c in content if isinstance(c, bytes)]))
    for c in content:
        if isinstance(c, int):
            written += c
            os.lseek(out, written, os.SEEK_SET)
            continue
        data = next(data_iter)
        view = memoryview(data)
        while view:
            n = os.write(out, view)
            view = view[n:]
        written += len(data)
    if written != e.size:
        raise IntegrityError(
            f"file {e.name!r}: its chunks hold {written} bytes, the tree says {e.size}"
        )
    if not content or isinstance(content[-1], int):
        os.ftruncate(out, e.size)  # a trailing hole (a new file is as long as its writes)


class ContentProof:
    """Proves that a file in place holds an entry's content (thread-safe: a chunker per
    thread)."""

    def __init__(self, chunking: ChunkingSecret) -> None:
        self._chunking = chunking
        self._local = threading.local()

    def open_if_same(self, fd: int, e: Entry, existing: os.stat_result) -> int | None:
        """A descriptor of ``e.name`` in folder ``fd`` (never through a symlink) when it is
        the file ``existing`` and re-chunks to ``e``'s chunk ids; else None."""
        try:
            f = os.open(e.name, _READ_FLAGS, dir_fd=fd)
        except OSError:
            return None
        try:
            st = os.fstat(f)
            if (
                stat.S_ISREG(st.st_mode)
                and (st.st_dev, st.st_ino) == (existing.st_dev, existing.st_ino)
                and st.st_size == e.size
                and self._chunks(f, st) == (e.content or [])
            ):
                return f
        except BaseException:
            os.close(f)
            raise
        os.close(f)
        return None

    def _chunks(self, f: int, st: os.stat_result) -> list[bytes | int] | None:
        chunker = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = self._local.chunker = Chunker(self._chunking)
        key = self._chunking.id_key
        try:
            return chunk_fd(f, st, chunker, lambda data: blob.blob_id(key, data))
        except FileChangedError:
            return None
