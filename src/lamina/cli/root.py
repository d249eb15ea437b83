"""The ``lamina`` command's Typer app: the root group, its lazily built groups, and
``main()``'s error handling for every command the quick entry (``lamina.cli.quick``)
does not take.

The groups are loaded lazily (click's ``LazyGroup`` pattern): ``COMMANDS`` (in
``lamina.cli``) names each group's module and its one-line help, and a group's module
is imported only when the group is invoked (or when completion, ``lamina docs`` or a
test needs the whole tree).

``main()`` is the one place that turns what ends a command into what a user sees:
a Lamina error is one ``error:`` line and its exit code; a usage error (unknown
command, missing argument, bad option value, a group given no command) is one line
with a hint and exit code 2; Ctrl-C is one line and exit code 130. None of them
prints a traceback. Everything printed goes through ``output.safe``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated

import typer
import typer.main

# Typer (from 0.2x) vendors its own copy of click: its usage errors are not click's
# classes. pyproject.toml pins typer to the minor version this was written against.
from typer._click.core import Command as ClickCommand
from typer._click.core import Context
from typer._click.exceptions import UsageError
from typer._click.formatting import HelpFormatter
from typer._click.shell_completion import CompletionItem
from typer.core import TyperCommand, TyperGroup

from lamina import __version__
from lamina.cli import COMMANDS, EXIT_CODES, GROUP_EXAMPLES, INTERRUPTED, Interrupt
from lamina.cli.output import fail, safe
from lamina.cli.quick import HELP_WIDTH
from lamina.errors import LaminaError


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


def load_command(name: str) -> ClickCommand:
    """Import the module of top-level command ``name`` and build its click command,
    with one-line usage errors and its group's examples."""
    module, attr, _ = COMMANDS[name]
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        _one_line_errors(obj)
        _add_examples(obj, name)
        cmd: ClickCommand = typer.main.get_group(obj)
    else:
        single = typer.Typer()
        single.command(name, cls=Command)(obj)
        cmd = typer.main.get_command(single)
    cmd.name = name
    return cmd


class Root(Group):
    """``lamina`` itself: the groups of :data:`COMMANDS` are built on first use; its
    help and shell completion list them from the table, importing none."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*COMMANDS, *(n for n in self.commands if n not in COMMANDS)]

    def get_command(self, ctx: Context, cmd_name: str) -> ClickCommand | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands[cmd_name] = load_command(cmd_name)
        return self.commands.get(cmd_name)

    def _short_help(self, name: str) -> str:
        if name in COMMANDS and name not in self.commands:
            return COMMANDS[name][2]
        return self.commands[name].get_short_help_str(limit=300)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        rows = [(n, self._short_help(n)) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, ClickCommand | None, list[str]]:
        try:
            return self._click_resolve_command(ctx, args)
        except UsageError as e:  # Typer suggests from the commands loaded so far only
            matches = get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if matches:
                e.message = f"{e.message.rstrip('.')}. Did you mean {matches[0]!r}?"
            raise

    def shell_complete(self, ctx: Context, incomplete: str) -> list[CompletionItem]:
        names = [n for n in self.list_commands(ctx) if n.startswith(incomplete)]
        options = [i for i in super().shell_complete(ctx, incomplete) if i.value not in COMMANDS]
        return [*(CompletionItem(n, help=self._short_help(n)) for n in names), *options]


# \b: click prints the table as it is, unwrapped.
EPILOG = "Exit codes:\n\n\b\n" + "\n".join(f"{code:>3}  {what}" for code, what in EXIT_CODES)

app = typer.Typer(
    name="lamina",
    help="Lamina: centralized image management for a fleet of endpoints.\n\n"
    "Examples: lamina status; lamina device list --state failing; "
    "lamina snapshot create /etc --data ./backups; lamina docs > lamina.md",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # click's plain help: Rich's costs `lamina --help` a tenth of a second to import.
    rich_markup_mode=None,
    cls=Root,
    # Typer's default add_completion=True gives `lamina --install-completion` and
    # `--show-completion` for bash, zsh and fish.
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


def _add_examples(t: typer.Typer, path: str) -> None:
    """Append ``GROUP_EXAMPLES[path]`` to group ``t``'s help, and so on down its groups."""
    example = GROUP_EXAMPLES.get(path)
    info = t.info
    base = info.help if isinstance(info.help, str) else ""
    if example and "Examples: " not in base:
        info.help = f"{base}\n\nExamples: {example}"
    for g in t.registered_groups:
        if g.typer_instance is not None:
            _add_examples(g.typer_instance, f"{path} {g.name or g.typer_instance.info.name}")


def _one_line_errors(t: typer.Typer) -> None:
    """Every group, nested ones too, is a :class:`Group`, every command a :class:`Command`."""
    if t.info.cls is not Root:
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


@app.command()
def docs(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """The reference of every command, in Markdown, generated from the commands themselves.

    Example: lamina docs --output lamina.md
    """
    text = command_reference()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}")


def command_reference() -> str:
    """Markdown for every command, option and argument (Typer's own generator)."""
    from typer.cli import get_docs_for_click

    click_app = typer.main.get_command(app)
    ctx = typer.Context(click_app, info_name="lamina")
    return get_docs_for_click(obj=click_app, ctx=ctx, name="lamina", title="lamina") + "\n"


_one_line_errors(app)  # after the last command is added


def usage_line(e: UsageError) -> str:
    """One line for a usage error: what is wrong, and where the help is."""
    message = " ".join(e.format_message().split())
    where = e.ctx.command_path if e.ctx is not None else "lamina"
    return f"error: {message} (see '{where} --help')"


def run(interrupt: Interrupt) -> None:
    """Run the command ``sys.argv`` names through the Typer app (``lamina.cli.main`` has
    wrapped the streams and set ``interrupt`` as the SIGINT handler)."""
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


def root_help_body() -> str:
    """What ``lamina --help`` prints after its usage line on a terminal 80 columns or
    wider (click formats to 78): the text the quick entry prints (``root_help.py``)."""
    cmd = typer.main.get_command(app)
    ctx = Context(cmd, info_name="lamina", terminal_width=HELP_WIDTH)
    return cmd.get_help(ctx).split("\n", 1)[1]


def write_root_help(path: Path = Path(__file__).with_name("root_help.py")) -> None:
    """Write ``root_help.py`` from the Typer app (``python -m lamina.cli.root_help``)."""
    from lamina.cli.root_help import key

    path.write_text(
        '"""``lamina --help`` below its usage line, as Typer prints it on a terminal 80\n'
        "columns or wider; generated by ``python -m lamina.cli.root_help`` from the Typer\n"
        "app (tests/cli/test_startup.py fails when it is stale). The quick entry prints it\n"
        'only while :data:`KEY` matches the command table it was made from."""\n\n'
        "from __future__ import annotations\n\n"
        "import zlib\n\n"
        f"KEY = {key()}\n"
        f"BODY = {root_help_body()!r}\n\n\n"
        "def key() -> int:\n"
        '    """A checksum of the tables the help is made from."""\n'
        "    from lamina.cli import COMMANDS, EXIT_CODES\n\n"
        "    return zlib.crc32(repr((COMMANDS, EXIT_CODES)).encode())\n\n\n"
        'if __name__ == "__main__":\n'
        "    from lamina.cli.root import write_root_help\n\n"
        "    write_root_help()\n"
    )
