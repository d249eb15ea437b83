"""``lamina login`` and ``lamina user``: sessions and accounts."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from lamina.cli.client import Api, save_login
from lamina.cli.common import JsonOpt
from lamina.cli.output import emit_json
from lamina.errors import UsageError


def login(
    url: Annotated[str, typer.Argument(help="The server, e.g. https://lamina.example:8470")],
    user: Annotated[str, typer.Option("--user", help="User name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Log in and save the session (mode 0600) for the other commands."""
    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else getpass.getpass(f"password for {user}: ")
    )
    if not password:
        raise UsageError("no password given")
    resp = Api(url, None).post("/auth/login", {"user": user, "password": password})
    path = save_login(url, resp["token"])
    typer.echo(f"logged in to {url} as {resp['user']} ({resp['role']}); session saved in {path}")


user_app = typer.Typer(
    help="User accounts and roles (administrator, helpdesk, readonly).", no_args_is_help=True
)


@user_app.command("create")
def user_create(
    name: str,
    role: Annotated[str, typer.Option(help="administrator, helpdesk or readonly.")] = "readonly",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user."""
    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else getpass.getpass(f"password for {name}: ")
    )
    doc = Api.from_login().post("/users", {"name": name, "password": password, "role": role})
    if as_json:
        emit_json(doc)
    else:
        typer.echo(f"user {doc['name']} ({doc['role']}) created")


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    """List users."""
    rows = Api.from_login().get("/users")
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['name']:<24} {r['role']:<14} {'disabled' if r['disabled'] else ''}")


@user_app.command("audit")
def user_audit(
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Show the audit log, newest first."""
    rows = Api.from_login().get("/audit", params={"limit": limit})
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['time']}  {r['actor']:<20} {r['action']:<22} {r['target']}")
