from __future__ import annotations

import os
import random

from lamina.store.chunker import Chunker
from lamina.store.keys import StoreKeys


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_chunks_cover_input_within_limits() -> None:
    keys = StoreKeys.generate()
    c = Chunker(keys.chunking)
    data = _data(20 * 1024 * 1024)
    chunks = [bytes(v) for v in c.cut(data)]
    assert b"".join(chunks) == data
    assert all(len(x) <= keys.chunking.max_size for x in chunks)
    assert all(len(x) >= keys.chunking.min_size for x in chunks[:-1])
    mean = len(data) / len(chunks)
    # The declared average is the real one (within the spread of 20 samples).
    assert 0.5 * keys.chunking.avg_size < mean < 2 * keys.chunking.avg_size


def test_boundaries_are_content_defined() -> None:
    keys = StoreKeys.generate()
    c = Chunker(keys.chunking)
    data = _data(12 * 1024 * 1024)
    shifted = os.urandom(1000) + data
    a = {bytes(v) for v in c.cut(data)}
    b = {bytes(v) for v in c.cut(shifted)}
    # Inserting bytes at the front changes only the first chunk or two.
    assert len(a & b) >= len(a) - 2


def test_boundaries_depend_on_the_store_secret() -> None:
    data = _data(12 * 1024 * 1024)
    a = [len(v) for v in Chunker(StoreKeys.generate().chunking).cut(data)]
    b = [len(v) for v in Chunker(StoreKeys.generate().chunking).cut(data)]
    assert a != b


def test_small_input_is_one_chunk() -> None:
    c = Chunker(StoreKeys.generate().chunking)
    assert [bytes(v) for v in c.cut(b"tiny")] == [b"tiny"]
    assert list(c.cut(b"")) == []
