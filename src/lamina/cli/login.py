"""``lamina login`` and ``lamina logout``: sessions."""

from __future__ import annotations

from typing import Annotated

import typer

from lamina.cli.client import Api, forget_login, save_login
from lamina.cli.common import PasswordStdinOpt, read_password


def login(
    url: Annotated[str, typer.Argument(help="The server, e.g. https://lamina.example:8470")],
    user: Annotated[str, typer.Option("--user", help="User name.")],
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Log in and save the session (mode 0600) for the other commands."""
    password = read_password(f"password for {user}: ", password_stdin)
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
