"""The ``lamina`` command: one Typer app, one module per command group.

``main()`` is the one place that turns what ends a command into what a user sees:
a Lamina error is one ``error:`` line and its exit code; a usage error (unknown
command, missing argument, bad option value, a group given no command) is one line
with a hint and exit code 2; Ctrl-C is one line and exit code 130. None of them
prints a traceback. Everything printed goes through ``output.safe``.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Annotated, Any

import typer

# Typer (from 0.2x) vendors its own copy of click: its usage errors are not click's
# classes. pyproject.toml pins typer to the minor version this was written against.
from typer._click.core import Command as ClickCommand
from typer._click.core import Context
from typer._click.exceptions import UsageError
from typer.core import TyperCommand, TyperGroup

from lamina import __version__
from lamina.cli.output import fail, install_safe_streams, safe
from lamina.cli.server import server
from lamina.errors import LaminaError

INTERRUPTED = "interrupted; run the same command again to resume"


def _parse_in(ctx: Context, parse: Callable[[], list[str]]) -> list[str]:
    """Run ``parse``; a usage error it raises names ``ctx``'s command (the option parser
    leaves that out), so the hint can point at the right ``--help``."""
    try:
        return parse()
    except UsageError as e:
        if e.ctx is None:
            e.ctx, e.cmd = ctx, ctx.command
        raise


class Command(TyperCommand):
    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        return _parse_in(ctx, lambda: super(Command, self).parse_args(ctx, args))


class Group(TyperGroup):
    """A command group that, given no command, says so in one line (Typer prints the
    whole help and then raises)."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            raise UsageError("missing command", ctx)
        return _parse_in(ctx, lambda: super(Group, self).parse_args(ctx, args))


app = typer.Typer(
    name="lamina",
    help="Lamina: centralized image management for a fleet of endpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lamina {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print Lamina's version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """Lamina: centralized image management for a fleet of endpoints."""


app.command("server")(server)

#: Command groups (and the commands that need the HTTP client), loaded only when named:
#: ``lamina agent status`` loads the agent's group alone, never the store's or the
#: server client's. Name → (module, its Typer app or command function, the help shown
#: in ``lamina --help``; ``tests/cli/test_help.py`` checks it is the command's own).
GROUPS: dict[str, tuple[str, str, str]] = {
    "login": (
        "lamina.cli.login",
        "login",
        "Log in and save the session (mode 0600) for the other commands.",
    ),
    "logout": (
        "lamina.cli.login",
        "logout",
        "Revoke this session on the server and remove the saved login.",
    ),
    "store": (
        "lamina.cli.store",
        "app",
        "The deduplicated store: init, check, gc, rebuild-index, stats.",
    ),
    "snapshot": (
        "lamina.cli.snapshot",
        "app",
        "Snapshots of folders in the store: create, list, ls, diff, restore, forget.",
    ),
    "user": (
        "lamina.cli.login",
        "user_app",
        "User accounts and roles (administrator, helpdesk, readonly).",
    ),
    "token": (
        "lamina.cli.fleet",
        "token_app",
        "Enrollment tokens, sessions and API tokens: create, list, revoke.",
    ),
    "device": ("lamina.cli.fleet", "device_app", "Enrolled devices."),
    "policy": (
        "lamina.cli.fleet",
        "policy_app",
        "CVD policies: schedule, retention, protected area, bandwidth.",
    ),
    "cvd": ("lamina.cli.cvd", "app", "CVDs: the central copy of each endpoint."),
    "layer": ("lamina.cli.layer", "app", "Base and app layers: capture, record, assign, enforce."),
    "collection": (
        "lamina.cli.layer",
        "collection_app",
        "Collections of CVDs, static or by a filter on device facts.",
    ),
    "task": ("lamina.cli.fleet", "task_app", "Long operations and their progress."),
    "agent": ("lamina.cli.agent", "app", "The endpoint agent."),
}
#: The order of ``lamina --help``.
ORDER = (
    "store",
    "snapshot",
    "server",
    "login",
    "logout",
    "user",
    "token",
    "device",
    "policy",
    "cvd",
    "layer",
    "collection",
    "task",
    "agent",
    "version",
)


def load_group(name: str) -> ClickCommand:
    """The click command of ``name``, built as ``add_typer`` (or ``command``) would."""
    module, attr, _ = GROUPS[name]
    target = getattr(importlib.import_module(module), attr)
    wrapper = typer.Typer()
    if isinstance(target, typer.Typer):
        wrapper.add_typer(target, name=name)
    else:
        wrapper.command(name)(target)
        wrapper.callback()(lambda: None)  # a group, even with one command
    _one_line_errors(wrapper)
    built = typer.main.get_command(wrapper)
    assert isinstance(built, TyperGroup)
    return built.commands[name]


class _LazyGroup(TyperGroup):
    """Stands for a command group in ``lamina --help`` until it is invoked, then hands
    over to the real one (whose module is imported only then)."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, help=GROUPS[name][2])
        self._real: ClickCommand | None = None

    def real(self) -> ClickCommand:
        if self._real is None:
            self._real = load_group(str(self.name))
        return self._real

    def make_context(
        self, info_name: str | None, args: list[str], parent: Context | None = None, **extra: Any
    ) -> Context:
        return self.real().make_context(info_name, args, parent, **extra)


class Root(Group):
    """The ``lamina`` group: light commands built by Typer, command groups loaded lazily."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        commands = {**self.commands, **{n: _LazyGroup(n) for n in GROUPS}}
        self.commands = {n: commands[n] for n in ORDER if n in commands} | commands


def _one_line_errors(t: typer.Typer) -> None:
    """Every group, nested ones too, is a :class:`Group`, every command a :class:`Command`."""
    t.info.cls = Group
    for c in t.registered_commands:
        c.cls = Command
    for g in t.registered_groups:
        g.cls = Group
        if g.typer_instance is not None:
            _one_line_errors(g.typer_instance)


@app.command()
def version() -> None:
    """Print Lamina's version."""
    typer.echo(__version__)


_one_line_errors(app)  # after the last command is added
app.info.cls = Root


def usage_line(e: UsageError) -> str:
    """One line for a usage error: what is wrong, and where the help is."""
    message = " ".join(e.format_message().split())
    where = e.ctx.command_path if e.ctx is not None else "lamina"
    return f"error: {message} (see '{where} --help')"


class _Interrupt:
    """SIGINT handler: remembers the interrupt, then raises KeyboardInterrupt as Python's does
    (Typer turns it into exit code 130 silently; ``main()`` prints the line)."""

    seen = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.seen = True
        raise KeyboardInterrupt


def main() -> None:
    install_safe_streams()
    interrupt = _Interrupt()
    signal.signal(signal.SIGINT, interrupt)
    try:
        rc = app(standalone_mode=False)
    except LaminaError as e:
        fail(e)
    except UsageError as e:
        print(usage_line(e), file=sys.stderr)
        sys.exit(2)
    except typer.TyperException as e:  # typer's other click errors, e.g. a file it cannot open
        print(f"error: {safe(e.format_message())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        interrupt.seen = True
        rc = 130
    if interrupt.seen:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    if isinstance(rc, int) and rc:
        sys.exit(rc)
