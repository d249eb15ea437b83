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


def test_a_few_files_over_4_kib_among_small_ones_do_not_stop_short_of_the_fraction(
    tmp_path: Path,
) -> None:
    """The small corpus after bench.run's change: some files grew past 4 KiB."""
    root = tmp_path / "small"
    made = method.build_small_files(root, 400, seed=2)
    for i, p in enumerate(sorted(root.rglob("*.txt"))[:20]):
        p.write_bytes(p.read_bytes() + bytes(5000 + i))
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    got = change_bytes(root, 0.05, seed=3)
    assert total * 0.05 <= got["changed_bytes"] < total * 0.05 + 8192
    assert made["small_files"] == 400 and len(got["files"]) > 16
