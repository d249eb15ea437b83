"""The bench's tool wrappers and its output (bench/tools.py, bench/common.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench import common, tools


def test_a_tools_error_holding_brackets_is_printed_as_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # borg's "Parent path [/x/repos/borg] does not exist" once ended a whole bench run
    # with Rich's MarkupError instead of reporting the tool's failure.
    common.say(
        "borg FAILED at init:\nParent path [/x/repos/borg] does not exist [/bold]", "bold red"
    )
    assert "[/x/repos/borg] does not exist [/bold]" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("borg") is None, reason="borg is not installed (make bench only)")
def test_borg_can_be_the_first_tool_of_a_pass(tmp_path: Path) -> None:
    borg = tools.Borg(tmp_path / "work", dict(os.environ))
    assert not borg.repo.parent.exists()
    borg.init()
    assert (borg.repo / "config").is_file()
