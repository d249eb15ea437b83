"""The count a first sync's progress shows: what a scan will cover, by the policy's
answers for whole folders or path by path."""

from __future__ import annotations

import os
from pathlib import Path

from lamina.agent.sync import ProtectedArea, protected_area
from lamina.layers.rules import builtin
from lamina.protocol.schemas import PolicySettings
from lamina.tree.scan_scope import estimate


def _tree(root: Path) -> tuple[int, int]:
    """Files the count must cover (their number and bytes), among what it must not (and
    ``skip.tmp``, which only a policy leaves out)."""
    covered = []
    for rel, size in (("a/one", 10), ("a/b/two", 200), ("three", 3000), ("a/keep.log", 7)):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        covered.append(size)
    (root / "a" / "skip.tmp").write_bytes(b"y" * 50_000)  # excluded by the policy
    (root / "pruned").mkdir()  # kept, its content not
    (root / "pruned" / "inside").write_bytes(b"z" * 40_000)
    os.symlink("three", root / "link")  # a symlink: not a file the scan reads
    os.symlink(root / "a", root / "dirlink")  # never followed
    os.mkfifo(root / "pipe")
    return len(covered), sum(covered)


def _counted(area: ProtectedArea, root: Path) -> tuple[tuple[int, int], int, int]:
    """The count by folder answers, and how many paths it asked about against path by path
    (which must count the same)."""
    asked: list[bytes] = []

    def exclude(rel: bytes, is_dir: bool) -> bool:
        asked.append(rel)
        return area.exclude(rel, is_dir)

    def prune(rel: bytes) -> bool:
        return rel == b"pruned" or area.prune(rel)

    per_path = estimate(root, exclude, prune)
    calls = len(asked)
    asked.clear()
    by_folder = estimate(root, exclude, prune, area.exclude_folder)
    assert by_folder == per_path
    return by_folder, len(asked), calls


def test_the_count_covers_what_the_policy_keeps_by_folder_answers_or_path_by_path(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    files, size = _tree(root)
    state = tmp_path / "state"
    # Nothing excluded below these folders: each folder decided whole, no call per entry.
    count, asked, per_path = _counted(
        protected_area(PolicySettings(), builtin(), root, state), root
    )
    assert count == (files + 1, size + 50_000)
    assert asked < per_path
    # A pattern that may match in any folder: every file asked about, skip.tmp left out.
    count, _, _ = _counted(
        protected_area(PolicySettings(exclude=["/**/*.tmp"]), builtin(), root, state), root
    )
    assert count == (files, size)
    assert estimate(root, lambda rel, d: False, lambda rel: False)[0] == files + 2
