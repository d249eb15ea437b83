"""tree/extents.py: a file on disk as chunk ids and holes."""

from __future__ import annotations

import os
from pathlib import Path

from lamina.store.chunker import Chunker
from lamina.store.keys import StoreKeys
from lamina.tree.extents import chunk_fd


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
