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
