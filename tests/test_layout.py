"""The code's layout: small modules, one concept each (issue 8's limit of 600 lines)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 600


def test_no_module_of_src_or_bench_is_over_600_lines() -> None:
    # not bench/work: the benchmarks' scratch folder (its corpora hold other projects' code)
    scratch = ROOT / "bench" / "work"
    modules = sorted((ROOT / "src").rglob("*.py")) + sorted(
        p for p in (ROOT / "bench").rglob("*.py") if not p.is_relative_to(scratch)
    )
    assert len(modules) > 100  # the tree is where this test expects it
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by concept: {long}"
