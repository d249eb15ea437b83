"""The cyclic collector passes over a restore's older objects less while it runs, and is as
it was afterwards (``lamina.tree.collector``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.store.repository import Store
from lamina.tree import collector
from lamina.tree.collector import fewer_collections
from lamina.tree.restore import Restorer, restore_tree

from .treeutil import MTIME, assert_same_tree, scan_tree, write


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    enabled = gc.isenabled()
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if enabled:
        gc.enable()


def test_a_restore_runs_with_older_objects_frozen_and_fewer_young_passes(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every object held when the restore starts is out of the collector's passes while
    it runs, and the youngest generation is collected less often (together about a tenth
    of a small-files restore's CPU); afterwards the collector is as it was."""
    root = tmp_path / "src"
    for i in range(5):
        write(root / "d" / f"f{i}", b"x" * (i + 1), MTIME + i)
    tid, _ = scan_tree(store, root)
    gc.set_threshold(700, 10, 10)
    assert gc.get_freeze_count() == 0
    held = len(gc.get_objects())
    seen: list[tuple[int, int]] = []
    real = Restorer.write_job

    def files(self: Restorer, queued, target) -> None:  # type: ignore[no-untyped-def]
        seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))
        real(self, queued, target)

    monkeypatch.setattr(Restorer, "write_job", files)
    st = restore_tree(store, tid, tmp_path / "out", workers=2)
    assert st.errors == [] and st.files == 5
    assert seen
    for frozen, young in seen:
        assert frozen >= held // 2  # most of what was held was frozen
        assert young == collector.YOUNG_THRESHOLD
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == (700, 10, 10)
    assert_same_tree(root, tmp_path / "out")


def test_a_freeze_made_by_the_caller_is_not_undone() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    before = gc.get_threshold()
    # Neither frozen again (more objects) nor unfrozen (none): frozen objects that other
    # threads of this process free meanwhile (earlier tests' daemons) lower the count.
    with fewer_collections():
        assert 0 < gc.get_freeze_count() <= frozen and gc.get_threshold() == before
    assert 0 < gc.get_freeze_count() <= frozen and gc.get_threshold() == before


def test_nothing_changes_while_the_collector_is_off() -> None:
    gc.disable()
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
    assert not gc.isenabled()


def test_an_error_inside_still_puts_the_collector_back() -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(RuntimeError), fewer_collections():
        assert gc.get_freeze_count() > 0
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == (700, 10, 10)


def test_two_blocks_at_once_put_the_collector_back_only_when_both_ended() -> None:
    """Two restores in threads of one process: the first in sets, the last out puts back."""
    before = gc.get_threshold()
    a, b = fewer_collections(), fewer_collections()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)  # the first to start ends first
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD and gc.get_freeze_count() > 0
    b.__exit__(None, None, None)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_backup_scans_with_older_objects_frozen_and_fewer_young_passes(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup's walk runs as a restore does: its full passes walked the imported modules
    for next to nothing (about a tenth of a 2nd endpoint's CPU on 100,000 small files);
    afterwards the collector is as it was."""
    from lamina.tree.backup import backup
    from lamina.tree.scan import Scanner

    root = tmp_path / "src"
    for i in range(5):
        write(root / "d" / f"f{i}", b"x" * (i + 1), MTIME + i)
    gc.set_threshold(700, 10, 10)
    held = len(gc.get_objects())
    seen: list[tuple[int, int]] = []
    real = Scanner._finish

    def finish(self: Scanner, d: object) -> None:
        seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))
        real(self, d)  # type: ignore[arg-type]

    monkeypatch.setattr(Scanner, "_finish", finish)
    done = backup(store, root)
    assert done.stats.files == 5 and seen
    assert all(frozen >= held // 2 and young == collector.YOUNG_THRESHOLD for frozen, young in seen)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == (700, 10, 10)


def test_a_scan_workers_jobs_run_with_its_imports_left_out_of_the_collector(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan's worker process serves its jobs as the walk runs (``fewer_collections``)."""
    import pickle
    import socket

    from lamina.tree import scan_proc

    seen: list[tuple[int, int]] = []

    def answer(*_args: object) -> tuple[object, ...]:
        seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))
        return ("ok", [], [], [])

    monkeypatch.setattr(scan_proc, "_answer", answer)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    c, before = store.keys.chunking, gc.get_threshold()
    secret = (c.chunker_seed, c.id_key, c.min_size, c.avg_size, c.max_size, store.keys.data_key)
    scan_proc._send(ours, pickle.dumps(secret))
    scan_proc._send(ours, pickle.dumps(("job", True, [])))
    ours.shutdown(socket.SHUT_WR)
    scan_proc.main(theirs.detach())
    got = scan_proc._recv(ours)
    ours.close()
    assert got is not None and pickle.loads(got[0])[0] == "ok"
    assert seen and all(frozen > 0 and young == collector.YOUNG_THRESHOLD for frozen, young in seen)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
