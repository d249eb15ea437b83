"""File deltas (store.delta): the new version from the old one and a zstd frame; hostile frames refused."""

from __future__ import annotations

import random

import pytest
import zstandard

from lamina.errors import IntegrityError, TooLargeError
from lamina.store.delta import MAX_FILE, apply_delta, make_delta

RNG = random.Random(12)
OLD = RNG.randbytes(3 * 1024 * 1024)
EDIT = RNG.randbytes(40_000)
NEW = OLD[:1_000_000] + EDIT + OLD[1_040_000:]
DELTA = make_delta(OLD, NEW)


def test_a_delta_is_about_the_changed_bytes_and_gives_the_new_version() -> None:
    assert len(EDIT) <= len(DELTA) < len(EDIT) + 4096
    assert apply_delta(OLD, DELTA, len(NEW)) == NEW


def test_a_small_file_and_an_empty_old_version() -> None:
    old, new = b"line one\nline two\n" * 50, b"line one\nline 2\n" * 50
    assert apply_delta(old, make_delta(old, new), len(new)) == new
    assert apply_delta(b"", make_delta(b"", new), len(new)) == new


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"not a zstd frame",
        DELTA[:-100],  # truncated
        DELTA[:4] + b"\xff" + DELTA[5:],  # a damaged frame header
        zstandard.ZstdCompressor().compress(NEW[:1000]),  # another size, no dictionary
    ],
)
def test_a_hostile_delta_is_an_integrity_error(bad: bytes) -> None:
    with pytest.raises(IntegrityError):
        apply_delta(OLD, bad, len(NEW))


def test_a_frame_that_declares_no_size_is_refused() -> None:
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    with pytest.raises(IntegrityError, match="declares"):
        apply_delta(OLD, cctx.compress(NEW[:5000]), 5000)


def test_sizes_above_the_limit_are_refused() -> None:
    with pytest.raises(TooLargeError):
        apply_delta(b"", b"", MAX_FILE + 1)
