"""``create_app(settings)``: the FastAPI application. No import-time side effects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from lamina import __version__
from lamina.config import ServerSettings
from lamina.db.stores import StoreLocation, init_store, open_database
from lamina.errors import LaminaError
from lamina.protocol import PROTOCOL_VERSION
from lamina.protocol.flex import MAX_IMAGE_SIZE
from lamina.protocol.schemas import HealthPublic
from lamina.server import console
from lamina.server.api import (
    admin,
    agent,
    blobs,
    collections,
    cvds,
    devices,
    driver_profiles,
    drivers,
    flex,
    flex_my,
    groups,
    layers,
    migration,
    ops,
    policies,
    store,
    tasks,
    tokens,
)
from lamina.server.console import views_upload
from lamina.server.context import ServerContext
from lamina.server.limits import BodyLimit
from lamina.server.metrics import Metrics, RequestMetrics
from lamina.server.services.flex_images import sweep_tmp
from lamina.server.services.store_ops import recover
from lamina.server.services.users import ensure_admin

#: How long the server keeps an idle keep-alive connection open. Longer than the HTTP
#: clients' own expiry (httpx's default, 5 s, which Lamina's clients use): with equal
#: times, a client reusing a connection just as the server closes it gets a dropped
#: request ("Server disconnected") instead of an answer.
KEEP_ALIVE_SECONDS = 65


def open_context(settings: ServerSettings) -> tuple[ServerContext, str | None]:
    """Open (or create, on first start) the store and database; make sure ``admin`` exists."""
    loc = StoreLocation(
        data=settings.data,
        db_url=settings.db,
        store_url=settings.store,
        keyfile=settings.keyfile,
        passphrase=settings.store_passphrase,
    )
    engine = open_database(loc)
    store = init_store(loc, engine=engine)
    generated = ensure_admin(engine, settings.admin_password)
    recover(engine)  # store tasks a stopped server process of this host left running
    sweep_tmp(settings.data)  # disks a stopped server process was receiving
    return ServerContext(settings=settings, engine=engine, store=store), generated


def create_app(settings: ServerSettings, ctx: ServerContext | None = None) -> FastAPI:
    if ctx is None:
        ctx, _ = open_context(settings)
    served = ctx

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        served.progress.close()  # the agents' progress reports still waiting
        served.task_progress.close()  # and their running tasks'
        served.reads.close()  # the counts of the read windows still open
        # Its pooled connections closed: on SQLite the last one to close copies the
        # write-ahead log into the database and removes it (a stopped server leaves one
        # file, not a log of up to 48 MiB beside it). The engine opens new ones if a
        # caller that shares it (a test, ``create_app``'s ``ctx``) goes on using it.
        served.engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="Lamina",
        version=__version__,
        description="Centralized image management for a fleet of endpoints.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        # FastAPI's OpenTelemetry bridge asks the global providers whether one is set up,
        # three look-ups a request (~2% of a poll's CPU); Lamina's metrics are its own
        # (``/metrics``), its requests never traced.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ctx = ctx
    app.state.metrics = Metrics(ctx)
    # Body sizes are capped for every route before any of them (or the bearer check) runs.
    app.add_middleware(
        BodyLimit,
        default=settings.max_json,
        per_path={
            "/api/v1/agent/bundles": settings.max_body,
            "/api/v1/drivers/import": settings.max_body,
            # Up to MAX_IDS hex ids (~67 bytes each in JSON).
            "/api/v1/agent/missing": max(settings.max_json, 2 * 1024 * 1024),
            # A disk image, streamed to a file (never held in memory).
            "/api/v1" + flex.UPLOAD_PATH: MAX_IMAGE_SIZE,
            views_upload.IMAGE_UPLOAD: MAX_IMAGE_SIZE,  # the console's
        },
    )

    # Outermost: every request is counted, a refused one too.
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)

    @app.exception_handler(LaminaError)
    async def lamina_error(_request: Request, exc: LaminaError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return JSONResponse({"code": "bad_request", "message": msg}, status_code=400)

    @app.get("/api/v1/health", summary="Liveness and version")
    def health() -> HealthPublic:
        return HealthPublic(
            status="ok",
            version=__version__,
            store=ctx.store.keys.store_id,
            protocol=PROTOCOL_VERSION,
        )

    # The agents' routes first: the router tries every route before the one that matches,
    # ~5 µs each, and an agent's poll is the request a server answers most (70-85 µs of
    # CPU a poll behind the 45 routes before them; docs/design.md, "Polls under load
    # (session 15)"). No other route's path is under /api/v1/agent/. The blob reads
    # next: a restore's requests (one per 16 MiB job) were matched after seven other
    # modules' routes, ~50 µs of each one's CPU ("Restores (session 16)"); no other
    # route's path is under /api/v1/blobs/.
    for module in (
        agent,
        blobs,
        admin,
        tokens,
        devices,
        policies,
        tasks,
        cvds,
        layers,
        collections,
        ops,
        drivers,
        driver_profiles,
        migration,
        flex,
        flex_my,
        groups,
        store,
    ):
        app.include_router(module.router, prefix="/api/v1")
    app.include_router(ops.metrics_router)
    console.mount(app)
    return app
