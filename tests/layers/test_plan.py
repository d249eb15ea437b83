"""``make_plan``: golden files (inputs -> the whole plan) and the steps' rules one by one."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from lamina.layers.merge import DPKG_STATUS
from lamina.layers.plan import Action, LayerRef, make_plan
from lamina.layers.rules import builtin
from tests.layers.golden_plan import MemoryTrees, cases, load_case, run_case


@pytest.mark.parametrize("path", cases(), ids=lambda p: p.stem)
def test_plan_matches_its_golden_file(path: Path) -> None:
    """A change to what a plan does shows as a golden diff (regenerate: tests/layers/make_golden.py)."""
    doc = load_case(path)
    assert run_case(doc["inputs"]) == doc["expected"]


def test_golden_cases_cover_every_action() -> None:
    seen = {a for p in cases() for a in load_case(p)["expected"]["counts"]}
    assert seen == set(get_args(Action))


def _plan(current: dict[str, object] | None, old: dict[str, object], new: dict[str, object]):  # type: ignore[no-untyped-def]
    t = MemoryTrees()
    refs = [LayerRef("base:1", "base", t.tree(old))] if old else []
    return t, make_plan(
        t.load,
        t.put_data,
        t.tree(current) if current is not None else None,  # type: ignore[arg-type]
        refs,
        [LayerRef("base:2", "base", t.tree(new))],  # type: ignore[arg-type]
        builtin("debian"),
    )


def test_nothing_to_do_when_the_endpoint_already_matches() -> None:
    files = {"/usr/bin/a": "a", "/etc/x.conf": "x\n"}
    _, plan = _plan(files, files, files)
    assert plan.items == [] and plan.writes == {} and plan.removes == []
    assert plan.download_bytes == 0 and plan.space_needed == 0


def test_a_large_text_file_is_replaced_not_merged() -> None:
    """Over TEXT_MERGE_MAX the binary rule applies: the layer wins, the user's copy goes beside."""
    from lamina.layers import plan as plan_mod

    big = "line\n" * (plan_mod.TEXT_MERGE_MAX // 5 + 1)
    _, plan = _plan(
        {"/etc/big.conf": big + "user\n"},
        {"/etc/big.conf": big},
        {"/etc/big.conf": big + "layer\n"},
    )
    assert [(i.path, i.action) for i in plan.items] == [("/etc/big.conf", "replaced")]
    assert "/etc/big.conf.lamina-user" in plan.writes


def test_a_merge_writes_the_merged_text() -> None:
    t, plan = _plan(
        {"/etc/a.conf": "a=1\nb=1\nc=9\n"},
        {"/etc/a.conf": "a=1\nb=1\nc=1\n"},
        {"/etc/a.conf": "a=2\nb=1\nc=1\n"},
    )
    assert t.text(plan.writes["/etc/a.conf"].content) == "a=2\nb=1\nc=9\n"
    assert plan.expect["/etc/a.conf"] is not None  # the agent checks the file it merged against


def test_no_package_database_no_dpkg_step() -> None:
    _, plan = _plan({"/usr/bin/a": "a"}, {}, {"/usr/bin/a": "b"})
    assert DPKG_STATUS not in plan.writes and plan.dpkg_base is None
