"""The web console at ``/``: server-rendered pages over the same services as the API.

Views (``views_*.py``) parse a request, call service functions, render a Jinja2
template; ``web.py`` holds the session, CSRF and security-header machinery they share.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from lamina.server.console import (
    views_admin,
    views_cvd,
    views_drivers,
    views_fleet,
    views_flex,
    views_migrate,
    views_store,
    views_upload,
)
from lamina.server.console.web import HERE, SecurityHeaders


def mount(app: FastAPI) -> None:
    """Serve the console at ``/`` (its static files under ``/static``)."""
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for r in (
        views_fleet.router,
        views_cvd.router,
        views_admin.router,
        views_drivers.router,
        views_flex.router,
        views_migrate.router,
        views_store.router,
        views_upload.router,
    ):
        app.include_router(r)
    app.add_middleware(SecurityHeaders)
