"""Docs are tested too: every command has help, and says it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from lamina.cli import app


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under ``group``, loading the lazy groups (as completion and docs do)."""
    out = []
    ctx = typer.Context(group, info_name=prefix[-1] if prefix else "lamina")
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        path = (*prefix, name)
        out.append((path, cmd))
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            out.extend(_commands(cmd, path))
    return out


COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def test_the_lazy_table_gives_each_commands_own_one_line_help() -> None:
    from lamina.cli import COMMANDS as LAZY
    from lamina.cli import load_command

    for name, (_, _, help_line) in LAZY.items():
        assert load_command(name).get_short_help_str(limit=300) == help_line, name


def test_help_lists_every_command_and_an_unknown_one_gets_a_suggestion() -> None:
    lamina = [sys.executable, "-m", "lamina.cli"]
    p = subprocess.run([*lamina, "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    listed = {line.split()[0] for line in p.stdout.splitlines() if line.startswith("  ")}
    assert {path[0] for path, _ in COMMANDS} <= listed
    typo = subprocess.run([*lamina, "devic", "list"], capture_output=True, text=True)
    assert typo.returncode == 2
    assert "Did you mean 'device'?" in typo.stderr


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


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_positional_argument_is_described(path: tuple[str, ...], cmd: Any) -> None:
    for param in cmd.params:
        if getattr(param, "param_type_name", "") == "argument":
            assert (getattr(param, "help", None) or "").strip(), (
                f"`lamina {' '.join(path)}`'s argument {param.name.upper()} has no description"
            )


GROUPS = [(p, c) for p, c in COMMANDS if hasattr(c, "commands")]


@pytest.mark.parametrize(("path", "group"), GROUPS, ids=[" ".join(p) for p, _ in GROUPS])
def test_every_group_shows_examples(path: tuple[str, ...], group: Any) -> None:
    assert "Examples: lamina " + " ".join(path) in (group.help or "")


def test_exit_codes_are_in_the_help_and_match_the_errors() -> None:
    import lamina.errors as errors
    from lamina.cli import EXIT_CODES

    codes = dict(EXIT_CODES)
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.LaminaError):
            assert cls.exit_code in codes, cls
            if cls.exit_code > 1 and cls.__base__ is errors.LaminaError:
                assert cls.__name__ in codes[cls.exit_code], (cls, codes[cls.exit_code])
    p = subprocess.run(
        [sys.executable, "-m", "lamina.cli", "--help"], capture_output=True, text=True
    )
    assert p.returncode == 0
    assert "Exit codes" in p.stdout
    for code, what in EXIT_CODES:
        assert f"{code:>3}  {what.split()[0]}" in p.stdout
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code, what in EXIT_CODES:
        assert f"| {code} | {what} |" in readme, f"README's exit-code table lacks {code}"


def test_docs_lists_every_command() -> None:
    from lamina.cli import command_reference

    text = command_reference()
    for path, _ in COMMANDS:
        assert f"`lamina {' '.join(path)}`" in text, path
    for path, cmd in COMMANDS:
        for param in cmd.params:
            if getattr(param, "param_type_name", "") == "option" and not param.hidden:
                assert param.opts[0] in text


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_scripts_are_produced_and_complete(shell: str, tmp_path: Path) -> None:
    # Typer detects the shell it runs under; its switch makes the options take the name.
    env = {**os.environ, "HOME": str(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    lamina = [
        sys.executable,
        "-c",
        "import sys; from lamina.cli import main; sys.argv[0] = 'lamina'; main()",
    ]
    shown = subprocess.run(
        [*lamina, "--show-completion", shell], capture_output=True, text=True, env=env
    )
    assert shown.returncode == 0, shown.stderr
    assert "_LAMINA_COMPLETE" in shown.stdout
    assert {"bash": "complete -o", "zsh": "#compdef lamina", "fish": "complete --command lamina"}[
        shell
    ] in shown.stdout
    installed = subprocess.run(
        [*lamina, "--install-completion", shell], capture_output=True, text=True, env=env
    )
    assert installed.returncode == 0, installed.stderr
    assert f"{shell} completion installed" in installed.stdout
    # The shell's side of a completion: the same program answers with the candidates.
    if shell == "bash":
        ask = {"_LAMINA_COMPLETE": "complete_bash", "COMP_WORDS": "lamina dev", "COMP_CWORD": "1"}
    else:
        ask = {"_LAMINA_COMPLETE": f"complete_{shell}", "_TYPER_COMPLETE_ARGS": "lamina dev"}
        if shell == "fish":
            ask["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
    answer = subprocess.run(lamina, capture_output=True, text=True, env={**env, **ask})
    assert answer.returncode == 0
    assert "device" in answer.stdout


def test_state_filters_complete_to_the_dashboards_states() -> None:
    env = {
        **os.environ,
        "_LAMINA_COMPLETE": "complete_bash",
        "COMP_WORDS": "lamina device list --state o",
        "COMP_CWORD": "4",
    }
    lamina = [
        sys.executable,
        "-c",
        "import sys; from lamina.cli import main; sys.argv[0] = 'lamina'; main()",
    ]
    p = subprocess.run(lamina, capture_output=True, text=True, env=env)
    assert p.stdout.split() == ["online", "offline"]
