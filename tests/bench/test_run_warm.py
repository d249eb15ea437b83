"""bench.run reads each step's inputs just before each tool's timed command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import Ran
from bench.tools import Tool

from bench import common
from bench import run as bench_run


class Recorder(Tool):
    """A tool that records which of its inputs were read since the last look."""

    name = "rec"

    def __init__(self, work: Path, reads: list[str]) -> None:
        super().__init__(work, {})
        self.reads = reads

    def available(self) -> str | None:
        return "1"

    def init(self) -> Ran:
        return Ran(0.0, "", "", 0, 0.0)

    def backup(self, src: Path, label: str, endpoint: str | None) -> tuple[Ran, dict[str, Any]]:
        self.seen = list(self.reads)
        return Ran(0.0, "", "", 0, 0.0), {}

    def restore(self, label: str, out: Path, corpus: Path) -> tuple[Ran, Path]:
        raise NotImplementedError

    def noop(self) -> Ran:
        return Ran(0.0, "", "", 0, 0.0)


def test_each_tools_source_and_repository_are_read_right_before_its_backup(
    tmp_path: Path, monkeypatch: Any
) -> None:
    reads: list[str] = []
    monkeypatch.setattr(common, "warm_up", lambda p: reads.append(p.name) or 0.25)
    src = tmp_path / "corpus"
    src.mkdir()
    a, b = Recorder(tmp_path, reads), Recorder(tmp_path, reads)
    a.repo.mkdir(parents=True)
    run = bench_run.Run(argparse.Namespace(), tmp_path, [a, b])
    bench_run.step_backup(run, "initial_backup_s", src, "s1")
    # the first tool's inputs were read before it ran; the second's again before it
    assert a.seen == ["corpus", "rec"]
    assert b.seen == ["corpus", "rec", "corpus", "rec"]
    assert run.details["rec"]["warm_up_s"] == {"initial_backup_s": 0.5}
