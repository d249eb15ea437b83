"""A file on disk as a tree entry's content: chunk ids in order and holes (sparse
files keep their holes, found with SEEK_DATA/SEEK_HOLE). Used by the scan, and by a
restore that proves a file already in place holds the tree's content."""

from __future__ import annotations

import os
from collections.abc import Callable

from lamina.store.chunker import Chunker

#: Bytes read at once from one data extent (cut at content-defined points after).
READ_PIECE = 64 * 1024 * 1024


class FileChangedError(Exception):
    """A file kept changing while it was read."""


def chunk_fd(
    fd: int, st: os.stat_result, chunker: Chunker, add: Callable[[memoryview | bytes], bytes]
) -> list[bytes | int]:
    """A file's content as a tree entry holds it: chunk ids (``add`` of each chunk) and holes."""
    size = st.st_size
    content: list[bytes | int] = []
    if size == 0:
        return content
    if size <= chunker.secret.min_size and st.st_blocks * 512 >= size:
        # One chunk, no hole: the common small file, without the extent and cut machinery.
        data = os.pread(fd, size, 0)
        if len(data) != size:
            raise FileChangedError
        return [add(data)]
    extents = _data_extents(fd, size) if st.st_blocks * 512 < size else [(0, size)]
    pos = 0
    for start, end in extents:
        if start > pos:
            content.append(start - pos)
        off = start
        # Read an extent in large pieces; cut each piece at content-defined points.
        while off < end:
            piece = min(end - off, READ_PIECE)
            data = os.pread(fd, piece, off)
            if len(data) != piece:
                raise FileChangedError
            for view in chunker.cut(data):
                content.append(add(bytes(view)))
            off += piece
        pos = end
    if pos < size:
        content.append(size - pos)
    return content


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) ranges of a sparse file that hold data."""
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            pos = end
    except OSError:
        return [(0, size)]
    return out
