"""``lamina server``: run the server (embedded default: SQLite + local store under --data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lamina.cli.common import DEFAULT_DATA, DataOpt, DbOpt, KeyfileOpt, StoreOpt
from lamina.cli.output import err_console
from lamina.errors import UsageError


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
    workers: Annotated[int, typer.Option(help="Background task workers in this process.")] = 1,
) -> None:
    """Start the Lamina server. On first start it creates the store and the user `admin`."""
    # Imported here, not at the top: FastAPI and uvicorn cost ~0.7 s of start-up
    # that every other command would pay. Not a cycle.
    import uvicorn

    from lamina.config import ServerSettings  # pydantic-settings: ~15 ms for everyone else
    from lamina.server.app import create_app, open_context

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    settings = ServerSettings(
        data=data,
        db=db,
        store=store,
        keyfile=keyfile,
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        workers=workers,
    )
    ctx, generated = open_context(settings)
    if generated:
        err_console.print(
            f"[bold yellow]Created user admin with password:[/bold yellow] {generated}\n"
            "It is shown only this once; set LAMINA_ADMIN_PASSWORD on first start to choose it."
        )
    app = create_app(settings, ctx)
    scheme = "https" if tls_cert else "http"
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
