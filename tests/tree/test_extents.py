"""tree/extents.py: a file on disk as chunk ids and holes."""

from __future__ import annotations

import os
from pathlib import Path

from lamina.store.chunker import Chunker
from lamina.store.keys import StoreKeys
from lamina.tree.extents import chunk_fd, cut_piece


def _chunks(path: Path) -> list[bytes | int]:
    chunker = Chunker(StoreKeys.generate(min_size=1024, avg_size=4096, max_size=16384).chunking)
    fd = os.open(path, os.O_RDONLY)
    try:
        return chunk_fd(fd, os.fstat(fd), chunker, lambda data: bytes(data))
    finally:
        os.close(fd)


def test_a_file_joins_back_from_its_chunks(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    (tmp_path / "f").write_bytes(data)
    content = _chunks(tmp_path / "f")
    assert len(content) > 1 and b"".join(c for c in content if isinstance(c, bytes)) == data
    (tmp_path / "empty").write_bytes(b"")
    assert _chunks(tmp_path / "empty") == []


def test_holes_stay_holes(tmp_path: Path) -> None:
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.write(b"head")
        f.seek(8 * 1024 * 1024)
        f.write(b"tail")
    content = _chunks(p)
    assert sum(c if isinstance(c, int) else len(c) for c in content) == p.stat().st_size
    if p.stat().st_blocks * 512 < p.stat().st_size:  # the file system keeps holes
        assert any(isinstance(c, int) and c > 1024 * 1024 for c in content)


def test_a_piece_read_in_steps_gives_the_chunks_of_one_cut(tmp_path: Path) -> None:
    """The chunks (hence the ids) of a file must not depend on how much is read at once:
    every step, smaller or larger than a chunk, gives what one cut of the piece gives."""
    chunker = Chunker(StoreKeys.generate(min_size=1024, avg_size=4096, max_size=16384).chunking)
    data = os.urandom(150_000) + bytes(70_000) + os.urandom(90_000) + b"ab" * 20_000
    p = tmp_path / "f"
    p.write_bytes(data)
    whole = [bytes(v) for v in chunker.cut(data)]
    assert len(whole) > 20
    fd = os.open(p, os.O_RDONLY)
    try:
        for step in (333, 1024, 4096, 5000, 16384, 16385, 100_000, len(data)):
            assert list(cut_piece(fd, 0, len(data), chunker, step)) == whole, step
        # a piece that starts inside the file: as one cut of its bytes
        part = data[12_345:300_000]
        assert list(cut_piece(fd, 12_345, len(part), chunker, 7000)) == [
            bytes(v) for v in chunker.cut(part)
        ]
    finally:
        os.close(fd)
