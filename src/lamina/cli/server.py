"""``lamina server``: run the server (embedded default: SQLite + local store under --data)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lamina.cli.common import DEFAULT_DATA, DataOpt, DbOpt, KeyfileOpt, StoreOpt, owner_only
from lamina.cli.output import err_console
from lamina.errors import UsageError

if TYPE_CHECKING:
    from lamina.config import ServerSettings


def server(
    data: DataOpt = DEFAULT_DATA,
    db: DbOpt = None,
    store: StoreOpt = None,
    keyfile: KeyfileOpt = None,
    host: Annotated[
        str, typer.Option(envvar="LAMINA_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="LAMINA_PORT", help="Port to listen on.")] = 8470,
    tls_cert: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM); with --tls-key.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    self_signed: Annotated[
        bool,
        typer.Option(
            "--self-signed",
            help="Serve https with a self-signed certificate made once and kept in DATA/tls; "
            "prints its SHA-256 fingerprint for `lamina agent enroll --fingerprint`.",
        ),
    ] = False,
) -> None:
    """Start the Lamina server. On first start it creates the store and the user `admin`."""
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if self_signed and tls_cert is not None:
        raise UsageError("give either --self-signed or --tls-cert/--tls-key, not both")
    # Imported here, not at the top: FastAPI and uvicorn cost ~0.7 s of start-up
    # that every other command would pay. Not a cycle.
    from lamina.config import ServerSettings  # pydantic-settings: ~15 ms for everyone else

    settings = ServerSettings(
        data=data,
        db=db,
        store=store,
        keyfile=keyfile,
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    # Everything the server creates is the owner's alone (finding 19): the database
    # holds password hashes, the audit log and tree ids.
    with owner_only(data):
        _serve(settings, self_signed)


def _serve(settings: ServerSettings, self_signed: bool) -> None:
    import uvicorn

    from lamina.server.app import create_app, open_context
    from lamina.server.tls import fingerprint, self_signed_pair

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
    ctx, generated = open_context(settings)
    if generated:
        err_console.print(
            f"[bold yellow]Created user admin with password:[/bold yellow] {generated}\n"
            "It is shown only this once; set LAMINA_ADMIN_PASSWORD on first start to choose it."
        )
    app = create_app(settings, ctx)
    scheme = "https" if tls_cert else "http"
    host, port = settings.host, settings.port
    err_console.print(
        f"Lamina listening on {scheme}://{host}:{port}  (store {ctx.store.backend.url})"
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
