"""The ``lamina`` command: one Typer app, one module per command group."""

from __future__ import annotations

import sys

import typer

from lamina import __version__
from lamina.cli import agent, cvd, fleet, layer, login, snapshot, store
from lamina.cli.output import fail
from lamina.cli.server import server
from lamina.errors import LaminaError

app = typer.Typer(
    name="lamina",
    help="Lamina: centralized image management for a fleet of endpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
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
app.add_typer(fleet.task_app, name="task")
app.add_typer(agent.app, name="agent")


@app.command()
def version() -> None:
    """Print Lamina's version."""
    typer.echo(__version__)


def main() -> None:
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except LaminaError as e:
        fail(e)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
