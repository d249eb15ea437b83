"""A file on disk as a tree entry's content: chunk ids in order and holes (sparse
files keep their holes, found with SEEK_DATA/SEEK_HOLE). Used by the scan, and by a
restore that proves a file already in place holds the tree's content."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

from lamina.store.chunker import Chunker

#: An extent is cut in pieces of this size: a piece ends a chunk (a format constant: the
#: chunk ids of every file above it depend on it).
READ_PIECE = 64 * 1024 * 1024
#: Bytes read at once within a piece: the chunks a piece gives are the same whatever this
#: is (``cut_piece``); it bounds the memory a reading thread holds.
READ_STEP = 8 * 1024 * 1024


class FileChangedError(Exception):
    """A file kept changing while it was read."""


def chunk_fd(
    fd: int,
    st: os.stat_result,
    chunker: Chunker,
    add: Callable[[memoryview | bytes], bytes],
    settle: Callable[[], None] | None = None,
) -> list[bytes | int]:
    """A file's content as a tree entry holds it: chunk ids (``add`` of each chunk) and holes.

    Without ``settle`` each chunk is ``bytes`` of its own. With it, a chunk is a view of
    the reading thread's buffer, valid until ``settle()`` returns: ``settle`` is called
    before that buffer is written again (and before ``chunk_fd`` returns or raises), so
    ``add`` may hold the views until then (``cut_piece``)."""
    small = small_content(fd, st, chunker.secret.min_size, add)
    if small is not None:
        return small
    size = st.st_size
    content: list[bytes | int] = []
    extents = _data_extents(fd, size) if st.st_blocks * 512 < size else [(0, size)]
    pos = 0
    for start, end in extents:
        if start > pos:
            content.append(start - pos)
        off = start
        # Cut an extent in pieces; each piece at content-defined points.
        while off < end:
            piece = min(end - off, READ_PIECE)
            content.extend(add(c) for c in cut_piece(fd, off, piece, chunker, settle=settle))
            off += piece
        pos = end
    if pos < size:
        content.append(size - pos)
    return content


def small_content(
    fd: int, st: os.stat_result, min_size: int, add: Callable[[memoryview | bytes], bytes]
) -> list[bytes | int] | None:
    """The content of a file of at most ``min_size`` bytes without a hole, read in one
    ``pread`` as one chunk (none if empty): the common small file, without the extent and
    cut machinery. None for any other file (``chunk_fd`` reads it)."""
    size = st.st_size
    if size == 0:
        return []
    if size > min_size or st.st_blocks * 512 < size:
        return None
    data = os.pread(fd, size, 0)
    if len(data) != size:
        raise FileChangedError
    return [add(data)]


def cut_piece(
    fd: int,
    off: int,
    size: int,
    chunker: Chunker,
    step: int = READ_STEP,
    settle: Callable[[], None] | None = None,
) -> Iterator[bytes | memoryview]:
    """The chunks of ``size`` bytes at ``off``, exactly as one ``chunker.cut`` of the
    whole piece gives them, read ``step`` bytes at a time.

    FastCDC decides a cut from the bytes since the chunk's start only, so every chunk
    of a buffer but its last (which the buffer's end may have cut short) is final; the
    last is carried over to the buffer's start and cut again with the next read. Reads
    go into one buffer (``readinto``-style), reused by the thread for every step and
    file: no new buffer, and no copy to join the carried bytes, per step.

    Each chunk is a copy of its own, or with ``settle`` a view of that buffer (no copy:
    a 2nd endpoint's chunks the store holds are never copied at all), and ``settle()``
    is called before the buffer is written again and when the piece is done or fails:
    after it, no view handed out may be read."""
    # carried bytes and one read are disjoint parts of the piece: never more than it
    view = _buffer(min(size, step + chunker.secret.max_size))
    carry = 0
    done = 0
    outer, _local.busy = getattr(_local, "busy", False), True
    try:
        while done < size:
            n = min(size - done, step)
            if os.preadv(fd, [view[carry : carry + n]], off + done) != n:
                raise FileChangedError
            done += n
            chunks = list(chunker.cut(view[: carry + n]))
            last = bytes(chunks.pop()) if done < size else b""
            for chunk in chunks:
                yield chunk if settle is not None else bytes(chunk)
            chunks.clear()
            if settle is not None:
                settle()  # before the carried bytes or the next read overwrite the views
            carry = len(last)
            view[:carry] = last
    finally:
        try:
            if settle is not None:
                settle()  # also after a failed read: the buffer goes to the next file
        finally:
            _local.busy = outer
            view.release()


_local = threading.local()


def _buffer(nbytes: int) -> memoryview:
    """A view of ``nbytes`` of this thread's read buffer (grown, never shrunk, by need);
    a buffer of its own while the thread's is in use (a piece cut inside another's)."""
    if getattr(_local, "busy", False):
        return memoryview(bytearray(nbytes))
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = _local.buf = bytearray(nbytes)
    return memoryview(buf)[:nbytes]


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
