"""depmod for the kernel modules a staged apply adds: run by `agent boot` after the apply,
re-run when the machine stopped before it, and again after a rollback takes them away.
Real kmod over a real modules folder (a fake .ko is enough for depmod's index)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lamina.agent import depmod, staging
from lamina.store.repository import Store
from lamina.tree.backup import backup
from lamina.tree.paths import build_tree, index

KVER = "6.1.0-9-amd64"
MODULE = f"lib/modules/{KVER}/updates/r8169x.ko"

pytestmark = pytest.mark.skipif(
    shutil.which("depmod") is None and shutil.which("depmod", path="/usr/sbin:/sbin") is None,
    reason="depmod is not installed (apt package kmod)",
)


def _delta(store: Store, tmp: Path) -> bytes:
    """A driver pack's delivery: one module for KVER."""
    ref = tmp / "pack"
    (ref / MODULE).parent.mkdir(parents=True)
    (ref / MODULE).write_bytes(b"\x7fELF not really a module")
    entries = index(store.get, backup(store, ref).snapshot.root)
    with store.writer() as w:
        return build_tree(
            w.put,
            {"/" + MODULE: entries["/" + MODULE]},
            {p: e for p, e in entries.items() if e.type == "dir"},
        )


def _indexed(root: Path) -> str:
    dep = root / f"lib/modules/{KVER}/modules.dep"
    return dep.read_text() if dep.exists() else ""


def test_kernels_of_ops() -> None:
    ops = [
        ["swap", MODULE],
        ["swap", "usr/lib/modules/6.12.1+deb13-amd64"],  # a folder swapped whole
        ["remove", "lib/modules/5.10.0-1-amd64/kernel/x.ko.xz"],
        ["swap", "lib/modules/../../etc/passwd"],  # not a kernel release
        ["meta", f"lib/modules/{KVER}"],
        ["swap", "lib/firmware/rtl_nic/x.fw"],
    ]
    assert depmod.kernels_of(ops) == ["5.10.0-1-amd64", "6.1.0-9-amd64", "6.12.1+deb13-amd64"]


def test_depmod_runs_after_the_apply_after_a_stop_and_after_a_rollback(
    store: Store, tmp_path: Path
) -> None:
    delta = _delta(store, tmp_path)
    root, state = tmp_path / "root", tmp_path / "state"
    (root / f"lib/modules/{KVER}/kernel").mkdir(parents=True)

    tx = staging.stage_delta(store, delta, [], root, state, {"kind": "layers"})
    assert tx.journal["depmod"] == [KVER]  # recorded at staging
    # The machine stops right after the last rename, before depmod ran.
    staging.apply(tx, root)
    assert (root / MODULE).exists() and _indexed(root) == ""
    assert staging.boot(state, root) == []  # the next boot: counted, and depmod run
    [applied] = staging.pending(state, root)
    assert applied.journal["depmod_done"] == {KVER: "done"}
    assert "updates/r8169x.ko:" in _indexed(root)

    # Never confirmed: the second boot rolls back, and the index forgets the module.
    [rolled] = staging.boot(state, root)
    assert rolled["unconfirmed"] and not (root / MODULE).exists()
    assert "r8169x" not in _indexed(root)


def test_boot_entry_says_depmod_ran_and_a_missing_kernel_is_skipped(
    store: Store, tmp_path: Path
) -> None:
    delta = _delta(store, tmp_path)
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    staging.stage_delta(store, delta, [], root, state, {"kind": "layers"})
    [entry] = staging.boot(state, root)
    assert entry["depmod"] == {KVER: "done"}
    assert "updates/r8169x.ko:" in _indexed(root)
    assert depmod.run(root, ["9.9.9-none"]) == {
        "9.9.9-none": "skipped: no modules folder for this kernel"
    }


def test_a_folder_swapped_whole_counts_the_kernels_below_it(tmp_path: Path) -> None:
    new = tmp_path / "new"
    (new / f"lib/modules/{KVER}/updates").mkdir(parents=True)
    assert depmod.kernels_of([["swap", "lib"]], [new, tmp_path / "absent"]) == [KVER]
    assert depmod.kernels_of([["swap", "lib/modules"]], [new]) == [KVER]
    assert depmod.kernels_of([["swap", "etc"]], [new]) == []
