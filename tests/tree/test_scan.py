"""The scan's per-file costs: what it calls once per folder, and what a small file skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lamina.store.chunker import Chunker
from lamina.store.repository import Store
from lamina.tree.model import decode_tree
from lamina.tree.restore import restore_tree
from lamina.tree.scan import Scanner
from lamina.tree.scan_entries import NameCache
from lamina.tree.scan_read import FileReader

from .treeutil import write


def small_tree(root: Path, folders: int = 3, files: int = 5) -> int:
    """``folders`` folders of ``files`` small files each; returns their bytes."""
    total = 0
    for d in range(folders):
        for f in range(files):
            data = f"folder {d} file {f}\n".encode() * (f + 1)
            write(root / f"d{d}" / f"f{f}", data)
            total += len(data)
    return total


def test_progress_is_reported_once_per_folder_with_its_files_and_bytes(
    store: Store, tmp_path: Path
) -> None:
    total = small_tree(tmp_path / "src")
    calls: list[tuple[int, int]] = []
    with store.writer() as w:
        scanner = Scanner(w, workers=2, progress=lambda n, b: calls.append((n, b)))
        scanner.scan(tmp_path / "src")
    # one call per folder holding files (not one per file), adding up to the scan's totals
    assert len(calls) == 3
    assert [n for n, _ in calls] == [5, 5, 5]
    assert sum(n for n, _ in calls) == scanner.stats.files == 15
    assert sum(b for _, b in calls) == scanner.stats.bytes == total


def test_small_files_are_read_without_a_chunker(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    small_tree(src)
    big = bytes(range(256)) * (2 * store.keys.chunking.min_size // 256 + 1)
    write(src / "big", big)
    asked: list[int] = []
    real = FileReader._chunker

    def chunker(self: FileReader) -> Chunker:
        asked.append(1)
        return real(self)

    monkeypatch.setattr(FileReader, "_chunker", chunker)
    with store.writer() as w:
        scanner = Scanner(w, workers=1)
        tid = scanner.scan(src)
    assert scanner.stats.files_read == 16
    assert len(asked) == 1  # the one file above the smallest chunk
    restore_tree(store, tid, tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == big
    assert (tmp_path / "out" / "d2" / "f4").read_bytes() == (src / "d2" / "f4").read_bytes()


def test_an_owner_name_is_asked_once_and_an_id_without_one_is_empty() -> None:
    asked: list[int] = []

    def lookup(uid: int) -> str:
        asked.append(uid)
        if uid == 4242:
            raise KeyError(uid)
        return f"user{uid}"

    names = NameCache(lookup)
    assert [names[0], names[4242], names[0], names[4242]] == ["user0", "", "user0", ""]
    assert asked == [0, 4242]


def test_a_folders_names_are_encoded_without_a_python_call_per_name(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unchanged folder's check is Python per entry: its names are encoded as
    # ``os.fsencode`` does, but in one comprehension, not a call of it per name.
    small_tree(tmp_path / "src", folders=2, files=50)
    write(tmp_path / "src" / "caf\u00e9", b"x")
    calls: list[object] = []
    real = os.fsencode

    def fsencode(name: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> bytes:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(os, "fsencode", fsencode)
    with store.writer() as w:
        scanner = Scanner(w, workers=2)
        tid = scanner.scan(tmp_path / "src")
    assert len(calls) <= 1  # the root's path
    root = decode_tree(store.get(tid))
    assert [e.name for e in root] == [b"caf\xc3\xa9", b"d0", b"d1"]
    assert scanner.stats.files == 101
