"""What a snapshot records for a later revert: its policy's area and the paths the scan missed."""

from __future__ import annotations

from pathlib import Path

from lamina.agent.sync import MAX_ERROR_PATHS, error_paths


def test_error_paths_are_relative_and_bounded(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    errs = [f"{root}/usr/lib/x.so: Permission denied", f"{root}/srv/a: b: Input/output error"]
    assert error_paths(errs, root) == ["usr/lib/x.so", "srv/a"]  # a wider area, never narrower
    assert len(error_paths(errs * MAX_ERROR_PATHS, root)) == MAX_ERROR_PATHS


def test_error_paths_are_bounded_in_size(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    long = [f"{root}/{'x' * 4000}/{i}: Permission denied" for i in range(100)]
    assert 0 < len(error_paths(long, root)) < 100
