"""Layer tree helpers: reading a file for a merge is bounded (review finding 13b/c)."""

from __future__ import annotations

import pytest

from lamina.errors import TooLargeError
from lamina.layers.trees import MAX_READ, read_file
from lamina.tree.model import Entry


def _never_loaded(bid: bytes) -> bytes:
    raise AssertionError("a refused file must not be read")


def test_a_hostile_hole_is_refused_before_allocating() -> None:
    """A device may commit a file that is one 2**40-byte hole; a merge must not allocate it."""
    e = Entry(name=b"status", type="file", size=2**40, content=[2**40])
    with pytest.raises(TooLargeError):
        read_file(_never_loaded, e)


def test_a_lying_size_is_caught_while_reading() -> None:
    chunk = b"x" * 1024
    e = Entry(name=b"f", type="file", size=10, content=[b"a" * 32] * 5)
    with pytest.raises(TooLargeError):
        read_file(lambda bid: chunk, e, limit=4000)


def test_small_files_read_whole() -> None:
    e = Entry(name=b"f", type="file", size=7, content=[b"a" * 32, 3])
    assert read_file(lambda bid: b"abcd", e) == b"abcd\0\0\0"
    assert MAX_READ >= 4 * 1024 * 1024
