"""The layer update's change (bench/e2e_layer.py) on a tree of small files only."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.e2e_layer import change_bytes

from bench import method


def test_a_tree_of_small_files_gets_whole_files_rewritten_up_to_the_fraction(
    tmp_path: Path,
) -> None:
    root = tmp_path / "small"
    made = method.build_small_files(root, 400, seed=2)
    before = {p: hashlib.sha256(p.read_bytes()).digest() for p in root.rglob("*") if p.is_file()}
    got = change_bytes(root, 0.05, seed=3)
    assert got["files"], "nothing was changed"
    assert made["small_bytes"] * 0.05 <= got["changed_bytes"] < made["small_bytes"] * 0.05 + 4096
    for c in got["files"]:
        p = root / c["path"]
        assert c["offset"] == 0 and c["bytes"] == c["size"] == p.stat().st_size
        assert hashlib.sha256(p.read_bytes()).digest() != before[p]
