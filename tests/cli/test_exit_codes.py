"""A command that finished with warnings (files skipped, files not restored) exits
``WARNINGS_EXIT``, not 0 and not an error's code; its output is complete."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamina.errors import WARNINGS_EXIT
from tests.cli.conftest import Cli


def test_warnings_have_their_own_exit_code() -> None:
    from lamina import errors

    codes = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.LaminaError)
    }
    assert WARNINGS_EXIT not in codes | {0, 2, 130}


@pytest.fixture
def unprivileged() -> Iterator[tuple[Path, list[str]]]:
    """A world-writable folder and the command prefix that runs as a user who cannot read
    a mode-000 file (root can: it runs the command as ``nobody``)."""
    d = Path(tempfile.mkdtemp(prefix="lamina-exit-"))
    os.chmod(d, 0o777)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root for this test")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        yield d, prefix
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_backup_that_skipped_files_exits_with_warnings(
    unprivileged: tuple[Path, list[str]],
) -> None:
    d, prefix = unprivileged
    src = d / "src"
    src.mkdir()
    (src / "readable").write_text("kept\n")
    (src / "secret").write_text("unreadable\n")
    os.chmod(src / "secret", 0o000)
    for p in (src, src / "readable"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    cli = Cli(d / "data")
    env = {**cli.env, "HOME": str(d)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, *cli.args(*args)], capture_output=True, text=True, env=env, timeout=300
        )

    assert run("store", "init").returncode == 0
    p = run("snapshot", "create", str(src), "--json")
    assert p.returncode == WARNINGS_EXIT, p.stderr
    doc = json.loads(p.stdout)  # the full report is still printed
    assert doc["files"] == 1 and len(doc["errors"]) == 1 and "secret" in doc["errors"][0]
    assert "finished with warnings: 1 files skipped" in p.stderr
    listed = json.loads(run("snapshot", "list", "--json").stdout)
    assert [s["id"] for s in listed] == [doc["id"]]  # the snapshot is committed
    os.chmod(src / "secret", 0o644)
    assert run("snapshot", "create", str(src)).returncode == 0  # no warnings: exit 0


def test_a_restore_that_could_not_write_a_file_exits_with_warnings(
    cli_factory: Callable[..., Cli], tmp_path: Path
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (src / "a").write_text("new\n")
    (src / "b").write_text("b\n")
    (out / "a").write_text("old\n")
    if subprocess.run(["chattr", "+i", str(out / "a")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (an immutable file) is not supported here")
    try:
        cli = cli_factory()
        cli.run("store", "init")
        cli.run("snapshot", "create", str(src))
        p = cli.run("snapshot", "restore", "latest", "--output", str(out), "--json", ok=False)
        assert p.returncode == WARNINGS_EXIT, p.stderr
        doc = json.loads(p.stdout)
        assert doc["files"] == 1 and [e.split(":")[0] for e in doc["errors"]] == ["a"]
        assert (out / "b").read_text() == "b\n" and (out / "a").read_text() == "old\n"
    finally:
        subprocess.run(["chattr", "-i", str(out / "a")], check=False)
