"""The bench's methodology (bench/method.py): rotation, medians, the small-files corpus."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench import method


def test_each_tool_goes_first_once_in_three_passes() -> None:
    names = ["lamina", "restic", "borg"]
    orders = [method.rotated(names, i) for i in range(3)]
    assert [o[0] for o in orders] == names
    assert all(sorted(o) == sorted(names) for o in orders)


def test_median_min_max_and_every_value_are_kept() -> None:
    passes = [
        {"initial_backup_s": {"lamina": 3.0, "restic": 9.0}},
        {"initial_backup_s": {"lamina": 1.0, "restic": 7.0}},
        {"initial_backup_s": {"lamina": 2.0, "restic": None}},
    ]
    s = method.summarize(passes)
    assert s["initial_backup_s"]["lamina"] == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "values": [3.0, 1.0, 2.0],
    }
    assert s["initial_backup_s"]["restic"]["median"] == 8.0  # of the passes that have it
    assert method.medians(s) == {"initial_backup_s": {"lamina": 2.0, "restic": 8.0}}
    assert method.spread(s["initial_backup_s"]["lamina"], "s", str) == "2.00 s (1.00-3.00)"


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_the_small_files_corpus_is_the_same_for_a_seed(tmp_path: Path) -> None:
    a = method.build_small_files(tmp_path / "a", 250, seed=3)
    b = method.build_small_files(tmp_path / "b", 250, seed=3)
    assert a == b and a["small_files"] == 250
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    files = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert len(files) == 250 and all(p.stat().st_size < 4096 for p in files)
    assert sum(p.stat().st_size for p in files) == a["small_bytes"]
    method.build_small_files(tmp_path / "c", 250, seed=4)
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a")


def test_both_benches_take_the_same_pass_options() -> None:
    from bench import e2e, run

    for parse in (run.parse_args, e2e.parse_args):
        args = parse(["--quick"])
        assert (args.corpora, args.small_files, args.size_mb, args.runs) == (
            ["usr", "small"],
            10_000,
            100.0,
            3,
        )
        assert parse(["--corpus", "/tmp"]).corpora == ["usr"]
        with pytest.raises(SystemExit):
            parse(["--corpora", "usr,big"])
        with pytest.raises(SystemExit):
            parse(["--runs", "0"])
