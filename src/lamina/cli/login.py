"""``lamina login`` and ``lamina user``: sessions and accounts."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from lamina.cli.client import Api, forget_login, save_login
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


def logout() -> None:
    """Revoke this session on the server and remove the saved login."""
    try:
        Api.from_login().post("/auth/logout")
    finally:
        # Even if the server cannot be reached or the session is gone already, the
        # token is no longer kept here.
        removed = forget_login()
    typer.echo("logged out" + ("" if removed else " (no saved login)"))


user_app = typer.Typer(
    help="User accounts and roles (administrator, helpdesk, readonly, flex-user).",
    no_args_is_help=True,
)


@user_app.command("create")
def user_create(
    name: str,
    role: Annotated[
        str, typer.Option(help="administrator, helpdesk, readonly or flex-user.")
    ] = "readonly",
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


def _read_password(prompt: str, stdin: bool) -> str:
    password = sys.stdin.readline().rstrip("\n") if stdin else getpass.getpass(prompt)
    if not password:
        raise UsageError("no password given")
    return password


@user_app.command("disable")
def user_disable(name: str, as_json: JsonOpt = False) -> None:
    """Disable a user: their sessions and tokens stop working at once."""
    doc = Api.from_login().post(f"/users/{name}/disable")
    if as_json:
        emit_json(doc)
    else:
        typer.echo(f"user {doc['name']} disabled")


@user_app.command("enable")
def user_enable(name: str, as_json: JsonOpt = False) -> None:
    """Enable a disabled user."""
    doc = Api.from_login().post(f"/users/{name}/enable")
    if as_json:
        emit_json(doc)
    else:
        typer.echo(f"user {doc['name']} enabled")


@user_app.command("delete")
def user_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a user and revoke every token of theirs."""
    if not yes:
        typer.confirm(f"delete user {name}?", abort=True)
    Api.from_login().delete(f"/users/{name}")
    typer.echo(f"user {name} deleted")


@user_app.command("passwd")
def user_passwd(
    name: str,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the new password (and first the current one, for your own) from stdin.",
        ),
    ] = False,
    own: Annotated[
        bool, typer.Option("--own", help="It is your own password: give the current one.")
    ] = False,
) -> None:
    """Change a user's password; their other sessions are revoked."""
    current = _read_password("current password: ", password_stdin) if own else None
    password = _read_password(f"new password for {name}: ", password_stdin)
    Api.from_login().put(f"/users/{name}/password", {"password": password, "current": current})
    typer.echo(f"password of {name} changed; their other sessions are revoked")
