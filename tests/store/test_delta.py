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


def _lines(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += f"sym_{len(out):09d} = 0x{rng.getrandbits(32):08x} # {rng.choice('abc')}\n".encode()
    return bytes(out[:size])


def test_the_blocks_end_at_the_edges_of_an_edit() -> None:
    """A 128 KiB block across an edit's edge is kept raw by zstd (too little gain), its
    unchanged bytes paid whole: blocks end at the edges instead. 300 KB rewritten in a
    4 MiB text file cost 1,282 bytes above it before, 399 now."""
    old = _lines(9, 4 * 1024 * 1024)
    edit = random.Random(6).randbytes(300_000)
    new = old[:1_500_000] + edit + old[1_800_000:]
    delta = make_delta(old, new)
    assert len(delta) <= len(edit) + 600
    assert apply_delta(old, delta, len(new)) == new
    # The first and last bytes the same, or nothing alike: still the new version.
    for other in (old[:5000] + new, new + old[-5000:], edit, old):
        assert apply_delta(old, make_delta(old, other), len(other)) == other


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
