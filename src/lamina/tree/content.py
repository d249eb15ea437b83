"""A file's content as a stream of bounded pieces: the one way to join a file entry's content.

A file entry's ``content`` lists chunk ids and holes (an int: that many zero
bytes). A hole may be as large as ``MAX_SIZE`` says a file may be (2**63), so
it is never materialized whole: it comes out in pieces of at most
``HOLE_PIECE`` bytes, and chunks come out one at a time, as they are read.
Whoever streams a file (the server's download route) holds one piece at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from lamina.errors import IntegrityError
from lamina.tree.model import Entry

#: Largest piece of a hole yielded at once.
HOLE_PIECE = 1024 * 1024

#: ``get_many(ids)``: the plaintexts of ``ids`` in order, read lazily (``Store.get_many``).
GetMany = Callable[[Iterable[bytes]], Iterator[bytes]]


def content_pieces(
    entry: Entry, get_many: GetMany, hole_piece: int = HOLE_PIECE
) -> Iterator[bytes]:
    """The bytes of file ``entry`` in order, as pieces of at most ``hole_piece`` bytes for holes
    and one chunk at a time for data. Raises ``IntegrityError`` (before yielding the byte
    too many, or at the end) when the content does not add up to ``entry.size``."""
    content = entry.content or []
    chunks = get_many(entry.chunk_ids())
    zeros = b""
    done = 0
    for c in content:
        if isinstance(c, int):
            if done + c > entry.size:
                raise IntegrityError(_mismatch(entry, f"more than {entry.size}"))
            left = c
            while left > 0:
                n = min(left, hole_piece)
                if len(zeros) < n:
                    zeros = bytes(n)
                yield zeros if n == len(zeros) else zeros[:n]
                left -= n
            done += c
            continue
        data = next(chunks)
        if done + len(data) > entry.size:
            raise IntegrityError(_mismatch(entry, f"more than {entry.size}"))
        yield data
        done += len(data)
    if done != entry.size:
        raise IntegrityError(_mismatch(entry, str(done)))


def _mismatch(entry: Entry, found: str) -> str:
    return f"file {entry.name!r}: its content holds {found} bytes, the tree says {entry.size}"
