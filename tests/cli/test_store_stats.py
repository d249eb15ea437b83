"""``lamina store stats`` shows pack sizes; ``store gc --dry-run`` lists what it would repack.

In process (Typer's runner): the commands' behaviour, not their start-up, is under test
here; ``test_store_cli.py`` runs the same commands as subprocesses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lamina.cli import app

PACK = 256 * 1024


def test_stats_show_small_packs_and_gc_rolls_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMINA_PACK_SIZE", str(PACK))
    runner = CliRunner()
    data = ["--data", str(tmp_path / "data")]

    def run(*args: str) -> str:
        r = runner.invoke(app, [*args, *data], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.stdout

    def js(*args: str) -> Any:
        return json.loads(run(*args, "--json"))

    run("store", "init")
    for i in range(4):  # four backups of 20 KB each: four small packs
        src = tmp_path / f"t{i}"
        src.mkdir()
        (src / "f").write_bytes(os.urandom(20_000))
        run("snapshot", "create", str(src), "--source", f"s{i}")
    st = js("store", "stats")
    assert st["pack_size"] == PACK
    assert st["small_packs"] == st["packs"] == 4
    assert st["sparse_packs"] == 0
    hist = st["pack_histogram"]
    assert sum(b["packs"] for b in hist) == 4
    assert sum(b["bytes"] for b in hist) == st["pack_bytes"]
    assert hist[0] == {"min": 0, "max": 64 * 1024, "packs": 4, "bytes": st["pack_bytes"]}
    assert hist[-1]["max"] is None
    human = run("store", "stats")
    assert "4 small" in human and "pack sizes" in human

    dry = run("store", "gc", "--dry-run")
    assert dry.count("would repack pack") == 4 and "(small)" in dry
    assert len(js("store", "gc", "--dry-run")["repack"]) == 4
    run("store", "gc")
    after = js("store", "stats")
    assert after["packs"] == 1 and after["blobs"] == st["blobs"]
    assert "no errors" in run("store", "check", "--read-data")
