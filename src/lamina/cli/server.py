"""``lamina server``: run the server (embedded default: SQLite + local store under --data),
and ``lamina server install-service``: its systemd unit.

Every option may also come from the environment (``LAMINA_HOST``...) or from
``/etc/lamina/server.toml`` (or ``--config``), in that order after the flag itself
(``config.py``).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lamina.cli import units
from lamina.cli.common import log_options, owner_only
from lamina.cli.logs import LogFlags, setup_logging
from lamina.cli.progress import err_console
from lamina.errors import UsageError
from lamina.heap import keep_free_tops, limit_arenas, map_large_blocks, trim_periodically

if TYPE_CHECKING:
    from lamina.config import ServerSettings

log = logging.getLogger("lamina.server")

#: Allocations between two passes of the cyclic collector over the youngest objects
#: while the server runs (the interpreter's default: 700). A sync's requests allocate a
#: few objects per blob id and tree entry and free nearly all of them by reference
#: counting: at 700 the passes found next to nothing, and the full ones among them
#: walked every object made since start-up (the decoded trees kept for their commit
#: among them), ~9% of a first sync's replayed server CPU (docs/design.md, "The
#: server's side of a sync (session 13)").
YOUNG_THRESHOLD = 10_000


def settle_collector() -> None:
    """Once started, before serving: start-up's objects (modules, the app and its
    schemas, the tables: ~170,000) live as long as the process, so they are left out of
    the cyclic collector's passes, which scanned them all several times a sync (~8% of a
    first sync's server CPU); and the youngest objects are collected every
    ``YOUNG_THRESHOLD`` allocations."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


app = typer.Typer(
    help="Run the Lamina server; on first start it creates the store and the user `admin`.\n\n"
    "Examples: lamina server --data /srv/lamina --host 0.0.0.0 --self-signed; "
    "lamina server install-service --data /srv/lamina --host 0.0.0.0 --self-signed",
    invoke_without_command=True,
    no_args_is_help=False,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="LAMINA_CONFIG",
        help="Settings file (TOML, keys named as the flags); default /etc/lamina/server.toml.",
    ),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Data directory (key file; SQLite and packs by default). (default lamina-data)",
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (postgresql://...); default SQLite under --data."),
]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Pack store URL (a path or s3://...); default DATA/store."),
]
KeyfileOpt = Annotated[
    Path | None, typer.Option("--keyfile", help="Key file; default DATA/keys.json.")
]
HostOpt = Annotated[
    str | None,
    typer.Option(help="Address to listen on; 0.0.0.0 for every address. (default 127.0.0.1)"),
]
PortOpt = Annotated[int | None, typer.Option(help="Port to listen on. (default 8470)")]
CertOpt = Annotated[Path | None, typer.Option(help="TLS certificate (PEM); with --tls-key.")]
KeyOpt = Annotated[Path | None, typer.Option(help="TLS private key (PEM).")]
SelfSignedOpt = Annotated[
    bool,
    typer.Option(
        "--self-signed",
        help="Serve https with a self-signed certificate made once and kept in DATA/tls; "
        "prints its SHA-256 fingerprint for `lamina agent enroll --fingerprint`.",
    ),
]


def _check_tls_flags(tls_cert: Path | None, tls_key: Path | None, self_signed: bool) -> None:
    """``--tls-cert`` and ``--tls-key`` go together, and not with ``--self-signed``."""
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if self_signed and tls_cert is not None:
        raise UsageError("give either --self-signed or --tls-cert/--tls-key, not both")


def _settings(config: Path | None, **flags: object) -> ServerSettings:
    from lamina.config import SERVER_CONFIG, ServerSettings

    return ServerSettings.load(config, SERVER_CONFIG, **flags)


@app.callback()
@log_options
def server(
    ctx: typer.Context,
    config: ConfigOpt = None,
    data: DataOpt = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    keyfile: KeyfileOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
    self_signed: SelfSignedOpt = False,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Who may read /metrics: loopback (default: no token from this host, an "
            "administrator's token from others), token, open or off."
        ),
    ] = None,
    *,
    logs: LogFlags,
) -> None:
    """Start the Lamina server. On first start it creates the store and the user `admin`."""
    if ctx.invoked_subcommand is not None:
        return
    _check_tls_flags(tls_cert, tls_key, self_signed)
    settings = _settings(
        config,
        data=data,
        db=db,
        store=store,
        keyfile=keyfile,
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        metrics=metrics,
        log_format=logs.log_format,
    )
    setup_logging(settings.log_format, settings.log_level, logs.verbose, logs.quiet)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise UsageError("tls_cert and tls_key go together (flags, environment or settings file)")
    # Everything the server creates is the owner's alone (finding 19): the database
    # holds password hashes, the audit log and tree ids.
    with owner_only(settings.data):
        _serve(settings, self_signed)


def _serve(settings: ServerSettings, self_signed: bool) -> None:
    # Before any thread starts: freed memory goes back to the system (lamina/heap.py).
    map_large_blocks()
    keep_free_tops()
    limit_arenas()
    trim_periodically()
    # Imported here, not at the top: FastAPI and uvicorn are the "server" extra, and
    # they cost ~0.7 s of start-up that every other command would pay. Not a cycle.
    try:
        import uvicorn

        from lamina.server.app import KEEP_ALIVE_SECONDS, create_app, open_context
        from lamina.server.tls import fingerprint, self_signed_pair
    except ModuleNotFoundError as e:
        raise UsageError(
            f"the server needs its libraries ({e.name} is missing): pip install 'lamina[server]'"
        ) from e

    if self_signed:
        settings.tls_cert, settings.tls_key = self_signed_pair(settings.data, settings.host)
    tls_cert, tls_key = settings.tls_cert, settings.tls_key
    if tls_cert is not None:
        try:
            pem = tls_cert.read_text()
        except OSError as e:
            raise UsageError(f"cannot read the certificate {tls_cert}: {e.strerror}") from e
        # Plain text, not rich: no wrapping or emoji codes inside the fingerprint.
        typer.echo(f"TLS certificate {tls_cert}", err=True)
        typer.echo(f"SHA-256 fingerprint {fingerprint(pem)}", err=True)
    keyfile = settings.keyfile or settings.data / "keys.json"
    first_start = not keyfile.exists()
    ctx, generated = open_context(settings)
    if generated:
        err_console.print(
            f"[bold yellow]Created user admin with password:[/bold yellow] {generated}\n"
            "It is shown only this once; set LAMINA_ADMIN_PASSWORD on first start to choose it."
        )
    if first_start:
        err_console.print(
            f"[bold yellow]Created the key file {keyfile}: back it up now[/bold yellow] "
            "(offline, e.g. a password manager). Without it nobody can read the store, "
            "Lamina included; every server of a scale-out deployment needs the same file."
        )
    app = create_app(settings, ctx)
    scheme = "https" if tls_cert else "http"
    host, port = settings.host, settings.port
    log.info("listening on %s://%s:%s (store %s)", scheme, host, port, ctx.store.backend.url)
    err_console.print(
        f"Lamina listening on {scheme}://{host}:{port}  (store {ctx.store.backend.url})"
    )
    settle_collector()
    # uvicorn sets its access logger to ``log_level``, undoing ``setup_logging``'s
    # "one line per request only with --verbose": a line formatted and written for every
    # poll, bundle and commit (docs/design.md, "Polls under load (session 15)").
    access_log = logging.getLogger("uvicorn.access").isEnabledFor(logging.INFO)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        # uvicorn's own loggers go through the handler setup_logging installed.
        log_config=None,
        log_level=logging.getLogger().level,
        access_log=access_log,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


@app.command("install-service")
def install_service(
    config: ConfigOpt = None,
    data: DataOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
    self_signed: SelfSignedOpt = False,
    env_file: Annotated[
        Path,
        typer.Option(
            help="Environment file for secrets (LAMINA_ADMIN_PASSWORD, LAMINA_STORE_PASSPHRASE, "
            "AWS_*...), read by systemd; made empty, mode 0600, if missing."
        ),
    ] = units.DEFAULT_ENV_FILE,
    user: Annotated[
        str | None, typer.Option(help="Run the server as this system user (default root).")
    ] = None,
    unit_dir: Annotated[Path, typer.Option(help="Where to write the unit.")] = units.UNIT_DIR,
) -> None:
    """Write (and where systemd runs, enable) the server's systemd unit.

    Example: lamina server install-service --data /srv/lamina --host 0.0.0.0
    --tls-cert /etc/lamina/server.crt --tls-key /etc/lamina/server.key
    """
    _check_tls_flags(tls_cert, tls_key, self_signed)
    settings = _settings(
        config, data=data, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key
    )
    if not env_file.exists():
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.touch(mode=0o600)
        typer.echo(f"wrote {env_file} (empty; put secrets there, one VAR=value a line)")
    text = units.server_unit(
        settings.data,
        settings.host,
        settings.port,
        settings.tls_cert,
        settings.tls_key,
        self_signed,
        env_file,
        config=config,
        user=user,
    )
    for p in units.write_units(text, unit_dir):
        typer.echo(f"wrote {p}")
