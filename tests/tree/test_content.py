"""``content_pieces``: a file's content in bounded pieces, whatever its size (finding 13(b))."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import pytest

from lamina.errors import IntegrityError
from lamina.tree.content import HOLE_PIECE, GetMany, content_pieces
from lamina.tree.model import Entry

HUGE = 2**40


def blobs(store: dict[bytes, bytes]) -> tuple[list[bytes], GetMany]:
    asked: list[bytes] = []

    def get_many(ids: Iterable[bytes]) -> Iterator[bytes]:
        for i in ids:
            asked.append(i)
            yield store[i]

    return asked, get_many


def test_a_huge_hole_comes_out_in_bounded_pieces() -> None:
    a, b = b"\1" * 32, b"\2" * 32
    asked, get_many = blobs({a: b"head", b: b"tail"})
    e = Entry(name=b"sparse", type="file", size=4 + HUGE + 4, content=[a, HUGE, b])
    pieces = content_pieces(e, get_many)
    assert next(pieces) == b"head"
    # The next thousand pieces: zeros, each at most HOLE_PIECE bytes (not 2**40 at once).
    first = list(itertools.islice(pieces, 1000))
    zeros = bytes(HOLE_PIECE)
    assert all(p == zeros for p in first)
    assert asked == [a]  # chunks are read as they are reached, not all up front


def test_pieces_join_to_the_file() -> None:
    a, b = b"\1" * 32, b"\2" * 32
    _, get_many = blobs({a: b"x" * 10, b: b"y" * 3})
    content: list[bytes | int] = [5, a, HOLE_PIECE * 2 + 7, b, 2]
    e = Entry(name=b"f", type="file", size=5 + 10 + HOLE_PIECE * 2 + 7 + 3 + 2, content=content)
    pieces = list(content_pieces(e, get_many))
    assert max(len(p) for p in pieces) == HOLE_PIECE
    want = bytes(5) + b"x" * 10 + bytes(HOLE_PIECE * 2 + 7) + b"y" * 3 + bytes(2)
    assert b"".join(pieces) == want


@pytest.mark.parametrize("size", [HUGE - 1, HUGE + 5, 3, 20])
def test_content_that_does_not_add_up_to_the_size_is_damage(size: int) -> None:
    a = b"\1" * 32
    _, get_many = blobs({a: b"z" * 10})
    # A hole larger than the size is refused before any of it is yielded.
    e = Entry(name=b"f", type="file", size=size, content=[a, HUGE] if size > 20 else [a, 5])
    with pytest.raises(IntegrityError, match="the tree says"):
        for _ in content_pieces(e, get_many):
            pass
