"""The ``lamina`` command: one Typer app, one module per command group.

``main()`` is the one place that turns what ends a command into what a user sees:
a Lamina error is one ``error:`` line and its exit code; a usage error (unknown
command, missing argument, bad option value, a group given no command) is one line
with a hint and exit code 2; Ctrl-C is one line and exit code 130. None of them
prints a traceback. Everything printed goes through ``output.safe``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Annotated

import typer

# Typer (from 0.2x) vendors its own copy of click: its usage errors are not click's
# classes. pyproject.toml pins typer to the minor version this was written against.
from typer._click.core import Context
from typer._click.exceptions import UsageError
from typer.core import TyperCommand, TyperGroup

from lamina import __version__
from lamina.cli import agent, cvd, driver, fleet, layer, login, snapshot, store
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


app.add_typer(store.app, name="store")
app.add_typer(snapshot.app, name="snapshot")
app.command("server")(server)
app.command("login")(login.login)
app.command("logout")(login.logout)
app.add_typer(login.user_app, name="user")
app.add_typer(fleet.token_app, name="token")
app.add_typer(fleet.device_app, name="device")
app.add_typer(fleet.policy_app, name="policy")
app.add_typer(cvd.app, name="cvd")
app.add_typer(layer.app, name="layer")
app.add_typer(layer.collection_app, name="collection")
app.add_typer(driver.app, name="driver")
app.add_typer(fleet.task_app, name="task")
app.add_typer(agent.app, name="agent")


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
