"""bench.freshfs: each benchmark restore gets a filesystem of its own, then nothing is left."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import freshfs, host


def test_the_mount_of_a_folder_is_the_deepest_mount_point_above_it(tmp_path: Path) -> None:
    findmnt = shutil.which("findmnt")
    if findmnt is None:
        pytest.skip("no findmnt to compare with")
    for path in (tmp_path, Path("/"), Path("/proc/self")):
        m = host.mount_of(path)
        assert m is not None
        want = subprocess.run(
            [findmnt, "-n", "-T", os.fspath(path), "-o", "FSTYPE,SOURCE"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert [m.fstype, m.source] == [want[0], want[1].split("[")[0]]


def test_without_a_filesystem_of_its_own_the_restore_goes_to_the_work_folder_and_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(freshfs, "plan", lambda work: "not root")
    with freshfs.fresh_target(tmp_path, "lamina", 1 << 30) as (out, where):
        assert out == tmp_path / "restore" / "lamina"
        assert where == "the work folder (not root: no filesystem of its own)"
        (out / "a").mkdir()
        (out / "a" / "f").write_bytes(b"x")
    assert not (tmp_path / "restore" / "lamina").exists()


def test_a_restore_target_is_a_new_filesystem_removed_afterwards(tmp_path: Path) -> None:
    p = freshfs.plan(tmp_path)
    if isinstance(p, str):
        pytest.skip(f"no filesystem of its own here: {p}")
    ctx = freshfs.fresh_target(tmp_path, "restic", 256 << 20)
    out, where = ctx.__enter__()
    try:
        if where.startswith("the work folder"):  # a container without loop devices
            pytest.skip(where)
        assert os.stat(out).st_dev != os.stat(tmp_path).st_dev
        assert list(out.iterdir()) == []
        (out / "f").write_bytes(b"y" * 4096)
    finally:
        ctx.__exit__(None, None, None)
    assert not (tmp_path / "restore" / "restic").exists()
    assert not (tmp_path / "restore" / "restic.img").exists()
    assert host.mount_of(tmp_path / "restore" / "restic") == host.mount_of(tmp_path)


def _scheme(root: Path, kd: str, state: str, action: str, min_age: int) -> None:
    k = root / kd
    (k / "contexts" / "0" / "schemes" / "0" / "access_pattern" / "age").mkdir(parents=True)
    (k / "contexts" / "0" / "schemes" / "0" / "quotas").mkdir()
    (k / "contexts" / "0" / "monitoring_attrs" / "intervals").mkdir(parents=True)
    (k / "state").write_text(state + "\n")
    (k / "contexts" / "0" / "operations").write_text("paddr\n")
    (k / "contexts" / "0" / "monitoring_attrs" / "intervals" / "aggr_us").write_text("5000000\n")
    sch = k / "contexts" / "0" / "schemes" / "0"
    (sch / "action").write_text(action + "\n")
    (sch / "access_pattern" / "age" / "min").write_text(f"{min_age}\n")
    (sch / "quotas" / "bytes").write_text("134217728\n")
    (sch / "quotas" / "reset_interval_ms").write_text("1000\n")


def test_the_host_records_the_kernels_page_out_schemes_that_run(tmp_path: Path) -> None:
    _scheme(tmp_path, "0", "on", "pageout", 12)
    _scheme(tmp_path, "1", "off", "pageout", 2)  # not running
    _scheme(tmp_path, "2", "on", "stat", 2)  # does not page out
    assert host.page_out_schemes(tmp_path) == [
        {"idle_s": 60.0, "bytes_per_s": 134217728.0, "operations": "paddr"}
    ]
    assert host.page_out_schemes(tmp_path / "absent") == []


def test_a_filesystem_that_cannot_be_made_leaves_the_restore_in_the_work_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(freshfs, "plan", lambda work: (["false"], ["mount"], "a fresh ext4"))
    with freshfs.fresh_target(tmp_path, "lamina", 1 << 20) as (out, where):
        assert out == tmp_path / "restore" / "lamina" and list(out.iterdir()) == []
        assert where.startswith("the work folder (false")
    assert list((tmp_path / "restore").iterdir()) == []
    details = {"lamina": {"restore_target": where}, "restic": {"restore_target": "a fresh x"}}
    assert freshfs.restore_target(details) == f"lamina: {where}; restic: a fresh x"
    details["restic"]["restore_target"] = where
    assert freshfs.restore_target(details) == where
    assert freshfs.restore_target({"corpus": None}) == ""
