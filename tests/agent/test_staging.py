"""Staged apply at boot: a crash at every step leaves the endpoint wholly old or wholly new."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina.agent import staging
from lamina.layers.rules import builtin
from lamina.protocol.schemas import PolicySettings
from lamina.store.repository import Store
from lamina.tree.backup import backup
from tests.cli.corpus import describe


def _endpoint(root: Path) -> Path:
    for d in ("etc/app", "usr/bin", "usr/lib", "home/ann", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/app/app.conf").write_text("version = 1\n")
    (root / "etc/hostname").write_text("box\n")
    (root / "usr/bin/tool").write_text("tool v1\n")
    (root / "usr/lib/old.so").write_bytes(b"old library")
    (root / "home/ann/notes.txt").write_text("ann's notes v1\n")
    os.symlink("tool", root / "usr/bin/tool-link")
    return root


def _mutate(root: Path) -> None:
    (root / "etc/app/app.conf").write_text("version = 2, broken\n")
    (root / "usr/bin/tool").write_text("tool v2\n")
    (root / "usr/lib/old.so").unlink()
    (root / "usr/lib/new.so").write_bytes(b"new library")
    (root / "usr/bin/tool-link").unlink()
    os.symlink("elsewhere", root / "usr/bin/tool-link")
    (root / "opt").mkdir()
    (root / "opt/app").write_text("installed later\n")
    (root / "home/ann/notes.txt").write_text("ann's notes v2\n")
    (root / "etc/hostname").write_text("renamed\n")


def _stage(store: Store, snapshot_root: bytes, root: Path, state: Path) -> staging.Transaction:
    scope = staging.revert_scope(builtin("linux"), True, PolicySettings(), root, state)
    tx, _plan = staging.stage_tree(
        store, snapshot_root, root, state, scope, store.keys.chunking, {"kind": "revert"}
    )
    return tx


def _system(desc: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    """Everything but what a system-only revert keeps (user data, identity) and the folder times."""
    out = {}
    for k, v in desc.items():
        if k.startswith("home") or k == "etc/hostname":
            continue
        out[k] = v[:4] + v[5:] if v[0] == "d" else v
    return out


def _no_dir_times(desc: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {k: (v[:4] + v[5:] if v[0] == "d" else v) for k, v in desc.items()}


@pytest.fixture
def setup(
    store: Store, tmp_path: Path
) -> Callable[[], tuple[Path, Path, dict, dict, staging.Transaction]]:
    def make() -> tuple[Path, Path, dict, dict, staging.Transaction]:
        root = _endpoint(tmp_path / "root")
        state = tmp_path / "state"
        snap = backup(store, root).snapshot
        old_state = _system(describe(root))
        _mutate(root)
        current = describe(root)
        tx = _stage(store, snap.root, root, state)
        assert describe(root) == current  # staging changes nothing on the endpoint
        return root, state, old_state, current, tx

    return make


def test_boot_applies_and_keeps_user_data_and_identity(setup) -> None:  # type: ignore[no-untyped-def]
    root, state, old_system, _current, tx = setup()
    ops = {rel for _, rel in tx.journal["ops"]}
    assert "home/ann/notes.txt" not in ops and "etc/hostname" not in ops
    staging.boot(state, root)
    assert _system(describe(root)) == old_system
    assert (root / "home/ann/notes.txt").read_text() == "ann's notes v2\n"
    assert (root / "etc/hostname").read_text() == "renamed\n"
    assert staging.confirm(state, root) and staging.pending(state, root) == []


def test_crash_after_every_step_leaves_old_or_new(
    setup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    root, state, old_system, current, tx = setup()
    steps = len(tx.journal["ops"])
    assert steps >= 5
    import shutil

    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine, symlinks=True)
    shutil.copytree(tx.path, tmp_path / "tx-copy", symlinks=True)
    for n in range(steps + 1):
        # Fresh endpoint and fresh staged transaction for every crash point.
        shutil.rmtree(root)
        shutil.copytree(pristine, root, symlinks=True)
        shutil.rmtree(tx.path, ignore_errors=True)
        shutil.copytree(tmp_path / "tx-copy", tx.path, symlinks=True)
        with pytest.raises(staging.InjectedCrash):
            staging.boot(state, root, fail_after=n)
        # The power went out after n renames. What is on disk right now is a mix;
        # the next boot must finish the job.
        staging.boot(state, root)
        assert _system(describe(root)) == old_system, f"crash after step {n}"
        assert (root / "home/ann/notes.txt").read_text() == "ann's notes v2\n"
        assert staging.confirm(state, root) and staging.pending(state, root) == []
    assert current  # (the pre-boot state was asserted unchanged by staging)


def test_crash_then_rollback_restores_old_exactly(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    root, state, _old, current, tx = setup()
    with pytest.raises(staging.InjectedCrash):
        staging.boot(state, root, fail_after=len(tx.journal["ops"]) // 2)
    [half] = staging.pending(state, root)
    assert half.journal["state"] == staging.APPLYING
    staging.rollback(half, root)
    # Wholly old again (renames touch folder mtimes, nothing else).
    assert _no_dir_times(describe(root)) == _no_dir_times(current)


def test_layer_delivery_survives_a_crash_at_every_step(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta (new and changed files, a removal) applied by `agent boot`, cut at every op."""
    import shutil

    from lamina.tree.paths import build_tree, index

    ref = _endpoint(tmp_path / "ref")
    (ref / "opt/app/bin").mkdir(parents=True)
    (ref / "opt/app/bin/app").write_text("app v1\n")
    (ref / "usr/bin/tool").write_text("tool patched\n")
    snap = backup(store, ref).snapshot
    entries = index(store.get, snap.root)
    with store.writer() as w:
        delta = build_tree(
            w.put,
            {p: entries[p] for p in ("/opt/app/bin/app", "/usr/bin/tool")},
            {p: e for p, e in entries.items() if e.type == "dir"},
        )
    root = _endpoint(tmp_path / "root")
    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine, symlinks=True)
    state = tmp_path / "state"
    expected_steps = None
    for n in range(0, 10):
        shutil.rmtree(root)
        shutil.copytree(pristine, root, symlinks=True)
        tx = staging.stage_delta(store, delta, ["/usr/lib/old.so"], root, state, {"kind": "layers"})
        expected_steps = len(tx.journal["ops"])
        assert expected_steps == 3  # swap /opt, swap usr/bin/tool, remove usr/lib/old.so
        if n <= expected_steps:
            with pytest.raises(staging.InjectedCrash):
                staging.boot(state, root, fail_after=n)
        staging.boot(state, root)
        assert (root / "opt/app/bin/app").read_text() == "app v1\n"
        assert (root / "usr/bin/tool").read_text() == "tool patched\n"
        assert not (root / "usr/lib/old.so").exists()
        assert (root / "home/ann/notes.txt").read_text() == "ann's notes v1\n"
        assert staging.confirm(state, root) and staging.pending(state, root) == []
        if n > expected_steps:
            break


# --- boot confirmation (journal v3) ------------------------------------------------------
def test_an_applied_transaction_waits_for_confirmation_then_commits(setup) -> None:  # type: ignore[no-untyped-def]
    root, state, old_system, _current, _tx = setup()
    [entry] = staging.boot(state, root)
    assert "error" not in entry
    [applied] = staging.pending(state, root)
    assert applied.journal["state"] == staging.APPLIED and applied.journal["v"] == 3
    assert applied.old.is_dir() and any(applied.old.rglob("*"))  # what it replaced is kept
    assert staging.confirm(state, root) == [applied.journal["id"]]
    assert staging.pending(state, root) == [] and not applied.path.exists()
    assert _system(describe(root)) == old_system
    assert staging.boot(state, root) == []  # nothing left to do at the next boot


def test_two_boots_without_confirmation_roll_back(setup) -> None:  # type: ignore[no-untyped-def]
    root, state, _old_system, current, _tx = setup()
    staging.boot(state, root)  # the apply
    assert _no_dir_times(describe(root)) != _no_dir_times(current)
    assert staging.boot(state, root) == []  # the first reboot: not confirmed yet, counted
    [waiting] = staging.pending(state, root)
    assert waiting.journal["boots"] == 1
    [rolled] = staging.boot(state, root)  # the second reboot without a confirmation
    assert rolled["unconfirmed"] and "without confirming a healthy boot" in rolled["error"]
    assert _no_dir_times(describe(root)) == _no_dir_times(current)  # wholly as before
    [failed] = staging.pending(state, root)
    assert failed.journal["state"] == staging.FAILED and failed.journal["rolled_back"]
    assert staging.boot(state, root) == []  # never applied again


def test_staging_waits_while_a_boot_is_unconfirmed(setup, store: Store) -> None:  # type: ignore[no-untyped-def]
    from lamina.errors import UsageError

    root, state, _old, _current, _tx = setup()
    staging.boot(state, root)
    with pytest.raises(UsageError, match="not confirmed yet"):
        staging.new_transaction(state, root)
    staging.confirm(state, root)
    staging.new_transaction(state, root)


def test_a_version_2_journal_still_reads(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    d = state / "staging" / "abc"
    d.mkdir(parents=True)
    (d / "journal.json").write_text(
        '{"v": 2, "id": "abc", "state": "staged", "ops": [], "done": 0, "summary": {}}'
    )
    [tx] = staging.pending(state, root)
    assert tx.journal["state"] == staging.STAGED
    (d / "journal.json").write_text(
        '{"v": 3, "id": "abc", "state": "applied", "ops": [], "done": 0, "summary": {}, "boots": -1}'
    )
    from lamina.errors import IntegrityError

    with pytest.raises(IntegrityError, match="boot count"):
        staging.pending(state, root)
