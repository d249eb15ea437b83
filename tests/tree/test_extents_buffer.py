"""``tree.extents.cut_piece`` reads into its thread's reused buffer: a piece cut while
another is being cut on the same thread must not share it (each gets its own bytes)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from lamina.store.chunker import Chunker
from lamina.store.keys import StoreKeys
from lamina.tree.extents import cut_piece


def test_a_piece_cut_inside_another_on_the_same_thread_keeps_both_intact(tmp_path: Path) -> None:
    chunker = Chunker(StoreKeys.generate().chunking)
    a, b = random.Random(1).randbytes(12 << 20), random.Random(2).randbytes(12 << 20)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    fa, fb = os.open(tmp_path / "a", os.O_RDONLY), os.open(tmp_path / "b", os.O_RDONLY)
    try:
        got_a, got_b = [], []
        # a step of 8 MiB holds several chunks: the ones after the first are still views of
        # the buffer when ``b`` is cut
        for chunk in cut_piece(fa, 0, len(a), chunker, step=8 << 20):
            got_a.append(chunk)
            if not got_b:  # b cut whole while a is half way
                got_b = list(cut_piece(fb, 0, len(b), chunker, step=8 << 20))
        assert b"".join(got_a) == a and b"".join(got_b) == b
    finally:
        os.close(fa)
        os.close(fb)


def test_with_settle_the_chunks_are_views_read_before_the_buffer_is_written_again(
    tmp_path: Path,
) -> None:
    """A reader that holds chunks until it settles them (the scan's ``FileReader``) gets
    views of the buffer, no copy each; ``settle`` comes before every rewrite of the buffer
    (the carried bytes, the next read) and at the end, so what it reads then is the file's."""
    chunker = Chunker(StoreKeys.generate(min_size=1024, avg_size=4096, max_size=16384).chunking)
    data = random.Random(3).randbytes(300_000)
    (tmp_path / "f").write_bytes(data)
    held: list[memoryview | bytes] = []
    settled: list[bytes] = []
    settles = 0

    def settle() -> None:
        nonlocal settles
        settles += 1
        settled.extend(bytes(v) for v in held)  # read now: valid until settle returns
        held.clear()

    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        for chunk in cut_piece(fd, 0, len(data), chunker, step=50_000, settle=settle):
            assert isinstance(chunk, memoryview)
            held.append(chunk)
        whole = [bytes(v) for v in chunker.cut(data)]
        assert settled == whole and not held
        assert settles >= 300_000 // 50_000  # once per read at least, and at the end
        # without settle: bytes of their own, as before
        assert all(type(c) is bytes for c in cut_piece(fd, 0, len(data), chunker, step=50_000))
    finally:
        os.close(fd)
