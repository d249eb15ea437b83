"""``lamina flex-client``: the laptop side of flex, run as the user.

It uses the session of ``lamina login URL --user NAME``; the server signing keys it
pins sit beside that session (``flex-keys.json``). Instances live under ``--dir``
(default ``$XDG_DATA_HOME/lamina/flex``, i.e. ``~/.local/share/lamina/flex``).
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lamina.cli.client import Api, config_path
from lamina.cli.common import JsonOpt
from lamina.cli.output import emit_json
from lamina.cli.progress import err_console
from lamina.errors import AuthError, UsageError

if TYPE_CHECKING:
    from lamina.flex.client import FlexClient

# lamina.flex (argon2, blake3, QEMU helpers) is imported inside the commands: every
# ``lamina`` command builds this group.
app = typer.Typer(
    help="Run the flex images you are entitled to on this laptop (encrypted, under a lease).",
    no_args_is_help=True,
)


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "lamina" / "flex"


DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        envvar="LAMINA_FLEX_DIR",
        help="The client's folder (default ~/.local/share/lamina/flex).",
        show_default=False,
    ),
]
PasswordStdinOpt = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the instance's password from stdin (one line)."),
]


def _notify(text: str) -> None:
    err_console.print(text, markup=False, highlight=False)


def _client(folder: Path | None, need_server: bool) -> FlexClient:
    from lamina.flex.client import FlexClient

    try:
        api: Api | None = Api.from_login()
    except AuthError:
        if need_server:
            raise
        api = None
    return FlexClient(
        folder or default_dir(),
        api,
        config_path().parent / "flex-keys.json",
        notify=_notify,
    )


def _password(stdin: bool, confirm: bool) -> str:
    if stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("instance password: ")
        if confirm and getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    if not password:
        raise UsageError("no password given")
    return password


@app.command("list")
def list_cmd(folder: DirOpt = None, as_json: JsonOpt = False) -> None:
    """What you are entitled to on the server you are logged in to."""
    rows = _client(folder, need_server=True).entitlements()
    out = [
        {
            "id": r["id"],
            "name": r["name"],
            "image": r["image"],
            "version": r.get("version"),
            "policy": r["policy"],
        }
        for r in rows
    ]
    if as_json:
        emit_json(out)
        return
    for r in out:
        typer.echo(
            f"{r['id']:<34} {r['name']:<24} {r['image']}:{r['version']}  policy {r['policy']['name']}"
        )


@app.command("download")
def download(
    entitlement: Annotated[str, typer.Argument(help="The entitlement's id or name (see `list`).")],
    folder: DirOpt = None,
    password_stdin: PasswordStdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download an instance of an entitlement, encrypted under a password you set.

    A download that was cut continues where it stopped (give the same password)."""
    from lamina.cli.progress import byte_progress

    client = _client(folder, need_server=True)
    password = _password(password_stdin, confirm=True)
    with byte_progress("downloading") as advance:
        seen = [0]

        def progress(done: int, total: int) -> None:
            advance(0, done - seen[0])
            seen[0] = done

        inst = client.download(entitlement, password, progress)
    if as_json:
        emit_json({"id": inst.id, "instance": inst.id})
    else:
        typer.echo(f"instance {inst.id} downloaded to {inst.path}")


@app.command("launch")
def launch(
    instance: Annotated[str, typer.Argument(help="The instance's id (see `status`).")],
    folder: DirOpt = None,
    password_stdin: PasswordStdinOpt = False,
    headless: Annotated[
        bool,
        typer.Option(
            "--headless",
            help="No display: the guest's first serial port is on stdout; returns at power-off.",
        ),
    ] = False,
    share: Annotated[
        Path | None,
        typer.Option("--share", help="A folder to share with the guest, if the policy allows."),
    ] = None,
    accel: Annotated[
        str, typer.Option(help="auto (KVM when usable, else TCG), kvm or tcg.")
    ] = "auto",
    offline: Annotated[
        bool, typer.Option("--offline", help="Do not check in; use the lease kept here.")
    ] = False,
) -> None:
    """Start an instance: check in (or check the lease offline), unlock, run QEMU."""
    from lamina.flex.client import LaunchOptions

    if accel not in ("auto", "kvm", "tcg"):
        raise UsageError(f"--accel must be auto, kvm or tcg, not {accel!r}")
    client = _client(folder, need_server=False)
    if offline:
        client.api = None
    password = _password(password_stdin, confirm=False)
    sys.stdout.flush()
    opts = LaunchOptions(
        headless=headless,
        shared_folder=share,
        accel=accel,  # type: ignore[arg-type]
        stdout=None,
    )
    result = client.launch(instance, password, opts)
    if result.stopped is not None:  # the lease ended, or a lock, revoke or policy change came
        raise typer.Exit(1)


@app.command("status")
def status(
    instance: Annotated[str | None, typer.Argument(help="One instance (default: all).")] = None,
    folder: DirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The instances on this laptop: policy, lease end, expiry, state."""
    rows = _client(folder, need_server=False).status(instance)
    if as_json:
        emit_json(rows[0] if instance else rows)
        return
    for r in rows:
        _print_status(r)


def _print_status(r: dict[str, Any]) -> None:
    extra = ""
    if r["locked_out_until"]:
        extra = f"  locked out until {r['locked_out_until']}"
    if not r["downloaded"]:
        extra += "  (download not finished)"
    typer.echo(
        f"{r['id']:<34} {r['image']}:{r['version']}  {r['state']:<8} policy {r['policy']['name']}"
        f"  lease until {r['lease_until']}  expires {r['expires_at'] or 'never'}{extra}"
    )
    if r["message"]:
        typer.echo(f"  message: {r['message']}")


@app.command("checkin")
def checkin(
    instance: Annotated[str | None, typer.Argument(help="One instance (default: all).")] = None,
    folder: DirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check in with the server now: renew leases, learn policy changes, lock and revoke."""
    client = _client(folder, need_server=True)
    ids = [instance] if instance else [i.id for i in client.folder.all()]
    for i in ids:
        lease = client.checkin(i)
        if lease.state == "revoked":
            _notify(f"instance {i} was revoked: its key and disk are deleted")
    rows = [r for i in ids for r in client.status(i)]
    if as_json:
        emit_json(rows[0] if instance else rows)
        return
    for r in rows:
        _print_status(r)


@app.command("remove")
def remove(
    instance: Annotated[str, typer.Argument(help="The instance's id.")],
    folder: DirOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an instance from this laptop (its key, disk and lease)."""
    if not yes:
        typer.confirm(f"delete instance {instance} and its disk?", abort=True)
    _client(folder, need_server=False).remove(instance)
    typer.echo(f"instance {instance} removed")
