"""Docs are tested too: every command has help, and says it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer.main

from lamina.cli import GROUPS, _LazyGroup, app


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name, lazy in group.commands.items():
        cmd = lazy.real() if isinstance(lazy, _LazyGroup) else lazy
        path = (*prefix, name)
        out.append((path, cmd))
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            out.extend(_commands(cmd, path))
    return out


COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def test_lamina_help_shows_each_groups_own_help() -> None:
    """``lamina --help`` lists the groups without importing them: the help it shows for
    each must be the group's own."""
    root = typer.main.get_command(app)
    for name in GROUPS:
        lazy = root.commands[name]  # type: ignore[attr-defined]
        assert isinstance(lazy, _LazyGroup) and lazy.help == lazy.real().help, name


def test_the_design_commands_exist() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    for needed in (
        "server",
        "login",
        "store init",
        "store check",
        "store gc",
        "store rebuild-index",
        "store stats",
        "token create",
        "device list",
        "policy create",
        "cvd centralize",
        "cvd list",
        "cvd show",
        "cvd snapshots",
        "cvd sync",
        "cvd restore",
        "cvd revert",
        "cvd archive",
        "layer capture",
        "layer record start",
        "layer record finalize",
        "layer assign",
        "layer enforce",
        "layer list",
        "layer show",
        "collection create",
        "collection list",
        "task list",
        "task show",
        "task watch",
        "agent enroll",
        "agent run",
        "agent boot",
        "agent status",
        "agent install-service",
    ):
        assert needed in names, needed


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], cmd: Any) -> None:
    assert (cmd.help or cmd.short_help or "").strip(), f"`lamina {' '.join(path)}` has no help"
    for param in cmd.params:
        if getattr(param, "param_type_name", "") == "option" and not param.hidden:
            assert (param.help or "").strip(), (
                f"`lamina {' '.join(path)} {param.opts[0]}` has no help"
            )


def test_help_runs() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "lamina.cli", "cvd", "restore", "--help"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and "--to-endpoint" in p.stdout
