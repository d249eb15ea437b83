"""``lamina user``: accounts, roles, passwords and the audit log."""

from __future__ import annotations

from typing import Annotated

import typer

from lamina.cli.api_commands import ApiCommands
from lamina.cli.client import Api
from lamina.cli.common import JsonOpt, PasswordStdinOpt, UserArg, emit, read_password
from lamina.cli.output import emit_json

app = typer.Typer(
    help="User accounts and roles (administrator, helpdesk, readonly, flex-user).",
    no_args_is_help=True,
)


@app.command("create")
def user_create(
    name: UserArg,
    role: Annotated[
        str, typer.Option(help="administrator, helpdesk, readonly or flex-user.")
    ] = "readonly",
    password_stdin: PasswordStdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user."""
    password = read_password(f"password for {name}: ", password_stdin)
    doc = Api.from_login().post("/users", {"name": name, "password": password, "role": role})
    emit(doc, as_json, f"user {doc['name']} ({doc['role']}) created")


users = ApiCommands(app, "/users", ("name", UserArg))
users.list(
    lambda r: f"{r['name']:<24} {r['role']:<14} {'disabled' if r['disabled'] else ''}",
    "List users.",
)


@app.command("audit")
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


users.post(
    "disable",
    lambda d: f"user {d['name']} disabled",
    "Disable a user: their sessions and tokens stop working at once.",
)
users.post("enable", lambda d: f"user {d['name']} enabled", "Enable a disabled user.")


@app.command("delete")
def user_delete(
    name: UserArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a user and revoke every token of theirs."""
    if not yes:
        typer.confirm(f"delete user {name}?", abort=True)
    Api.from_login().delete(f"/users/{name}")
    typer.echo(f"user {name} deleted")


@app.command("passwd")
def user_passwd(
    name: UserArg,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the new password (and first the current one, for your own) from stdin.",
        ),
    ] = False,
    own: Annotated[
        bool,
        typer.Option(
            "--own",
            help="It is your own password: give the current one (asked anyway when NAME is"
            " the logged-in user).",
        ),
    ] = False,
) -> None:
    """Change a user's password; their other sessions are revoked."""
    api = Api.from_login()
    own = own or api.get("/auth/me").get("name") == name
    current = read_password("current password: ", password_stdin) if own else None
    password = read_password(f"new password for {name}: ", password_stdin)
    api.put(f"/users/{name}/password", {"password": password, "current": current})
    typer.echo(f"password of {name} changed; their other sessions are revoked")
