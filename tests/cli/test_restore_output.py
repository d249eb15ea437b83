"""`lamina snapshot restore --output` as root: an endpoint-chosen tree gets no device
nodes, FIFOs, setuid/setgid bits or foreign owners unless asked (review finding 17)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import Cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="about restores made as root")


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "disk", stat.S_IFBLK | 0o666, os.makedev(8, 0))
    os.chmod(src / "disk", 0o666)
    os.mkfifo(src / "pipe")
    (src / "rootshell").write_bytes(b"#!/bin/sh\nexec /bin/sh -p\n")
    os.chmod(src / "rootshell", 0o4755)
    (src / "notes").write_bytes(b"user data")
    os.chown(src / "notes", 1000, 1000)
    return src


def test_output_restore_is_safe_by_default_and_exact_when_asked(
    cli_factory: Callable[..., Cli], tmp_path: Path, hostile: Path
) -> None:
    cli = cli_factory()
    cli.json("store", "init")
    cli.json("snapshot", "create", str(hostile))
    out = tmp_path / "out"
    cli.run("snapshot", "restore", "latest", "--output", str(out))
    assert sorted(os.listdir(out)) == ["notes", "rootshell"]
    assert stat.S_IMODE(os.stat(out / "rootshell").st_mode) == 0o755
    assert os.stat(out / "notes").st_uid == 0

    exact = tmp_path / "exact"
    cli.run(
        "snapshot", "restore", "latest", "--output", str(exact), "--special-files", "--same-owner"
    )
    assert stat.S_ISBLK(os.lstat(exact / "disk").st_mode)
    assert stat.S_ISFIFO(os.lstat(exact / "pipe").st_mode)
    assert stat.S_IMODE(os.stat(exact / "rootshell").st_mode) == 0o4755
    assert os.stat(exact / "notes").st_uid == 1000
