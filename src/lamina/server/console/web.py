"""What every console view shares: the session cookie, CSRF, security headers, rendering, errors.

- The session is a user token made by ``users.login`` (the API's own sessions), kept
  in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` when the request came
  over TLS). Every view authenticates it with ``users.authenticate``; permissions
  are the API's, checked by the services the views call.
- CSRF: every form carries a token; every request that is not GET/HEAD is refused
  unless its form's token matches. Logged in, the token is an HMAC of the session
  token (only a holder of the cookie can compute it); on the login form it is a
  random value also set as a cookie (double submit).
- Every console response carries a Content-Security-Policy without inline scripts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina.errors import AuthError, ForbiddenError, LaminaError, UsageError
from lamina.server.context import ServerContext
from lamina.server.security import Principal
from lamina.server.services.users import authenticate

HERE = Path(__file__).parent
SESSION_COOKIE = "lamina_session"
LOGIN_CSRF_COOKIE = "lamina_login_csrf"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"


def _when(t: dt.datetime | int | None) -> str:
    if t is None:
        return "never"
    if isinstance(t, int):
        t = dt.datetime.fromtimestamp(t, dt.UTC)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(t: dt.datetime | None) -> str:
    if t is None:
        return "never"
    s = int((dt.datetime.now(dt.UTC) - t).total_seconds())
    if s < 60:
        return "just now" if s < 5 else f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


templates = Jinja2Templates(
    env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
)
templates.env.filters["size"] = _size
templates.env.filters["when"] = _when
templates.env.filters["ago"] = _ago
#: JSON as text (autoescaped like any other), so that ``<`` reads as ``<``, not ``\u003c``.
templates.env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False, default=str)


def context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(context)]


def csrf_for(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"lamina-console-csrf", hashlib.sha256).hexdigest()


def session_actor(request: Request, ctx: Ctx) -> Principal:
    """The logged-in user of this request; AuthError (→ the login page) otherwise."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise AuthError("log in first")
    actor = authenticate(ctx.engine, token)
    if actor.kind != "user":
        raise AuthError("the console is for users")
    return actor


Actor = Annotated[Principal, Depends(session_actor)]


async def check_csrf(request: Request) -> None:
    """Refuse a state change whose form does not carry this session's CSRF token."""
    form = await request.form()
    check_token(request, form.get("csrf"))


def check_token(request: Request, sent: object) -> None:
    """Refuse ``sent`` unless it is this session's CSRF token (the login form's, on /login)."""
    session = request.cookies.get(SESSION_COOKIE)
    if request.url.path == "/login":
        expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    else:
        expected = csrf_for(session) if session else None
    if not isinstance(sent, str) or not expected or not hmac.compare_digest(sent, expected):
        raise ForbiddenError("the form has expired or did not come from this console: reload it")


def render(
    request: Request,
    template: str,
    actor: Principal | None,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    token = request.cookies.get(SESSION_COOKIE)
    perms = actor.permissions if actor else frozenset()
    return templates.TemplateResponse(
        request,
        template,
        {
            "me": actor,
            "can": lambda p: p in perms,
            "csrf": csrf_for(token) if token and actor else values.pop("login_csrf", ""),
            "path": request.url.path,
            **values,
        },
        status_code=status_code,
    )


def add_page(router: APIRouter, path: str, template: str, **show: Callable[..., object]) -> None:
    """``GET path``: ``template`` with, under each keyword of ``show``, what that service
    function returns to the logged-in user. The functions are called ``(engine, actor)``,
    or ``(engine, actor, ref)`` where ``path`` ends in ``/{ref}`` (a thing's own page).

    A page that does more (asks a permission first, shows a list only to some) is a view
    of its own.
    """

    def listing(request: Request, ctx: Ctx, actor: Actor) -> Response:
        values: dict[str, Any] = {key: f(ctx.engine, actor) for key, f in show.items()}
        return render(request, template, actor, **values)

    def one(request: Request, ctx: Ctx, actor: Actor, ref: str) -> Response:
        values: dict[str, Any] = {key: f(ctx.engine, actor, ref) for key, f in show.items()}
        return render(request, template, actor, **values)

    router.add_api_route(path, one if path.endswith("/{ref}") else listing, methods=["GET"])


def confirm_page(
    request: Request,
    actor: Principal,
    *,
    title: str,
    what: str,
    action: str,
    button: str,
    back: str,
    fields: dict[str, str] | None = None,
    **extra: Any,
) -> HTMLResponse:
    """The page a console action shows before it acts: ``what`` it does, a form that POSTs
    to ``action`` with ``button``, and a way ``back``. ``extra`` feeds the template's
    per-``kind`` inputs (a snapshot to restore, a message, a policy)."""
    return render(
        request,
        "confirm.html",
        actor,
        title=title,
        what=what,
        action=action,
        button=button,
        back=back,
        fields=fields or {},
        **extra,
    )


def set_cookie(request: Request, response: Response, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


class ConsoleRoute(APIRoute):
    """A console route: CSRF checked on every state change; errors become pages, not JSON."""

    #: Whether the route checks the CSRF token of the form before the view runs; a view
    #: that streams its body (``StreamedRoute``) checks it itself.
    form_csrf = True

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        form_csrf = self.form_csrf

        async def run(request: Request) -> Response:
            try:
                if form_csrf and request.method not in ("GET", "HEAD"):
                    await check_csrf(request)
                return await handler(request)
            except ForbiddenError as e:
                return _error(request, e)
            except AuthError:
                if request.headers.get("hx-request"):
                    return Response(status_code=401, headers={"HX-Redirect": "/"})
                return see_other("/")
            except LaminaError as e:
                return _error(request, e)
            except (RequestValidationError, ValidationError) as e:
                return _error(request, UsageError(_invalid(e.errors())))

        return run


class StreamedRoute(ConsoleRoute):
    """A console route whose view reads its own body as a stream (an upload), and so
    checks the form's CSRF token itself, with ``check_token``, before it keeps a byte."""

    form_csrf = False


def _invalid(errors: Sequence[Any]) -> str:
    """The first problem of a form, said as "field: what is wrong"."""
    first = errors[0] if errors else {}
    where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path"))
    msg = str(first.get("msg", "invalid input"))
    return f"{where}: {msg}" if where else msg


def _error(request: Request, e: LaminaError) -> HTMLResponse:
    actor = None
    with contextlib.suppress(LaminaError):
        actor = session_actor(request, context(request))
    return render(
        request, "error.html", actor, status_code=e.http_status, message=e.message, code=e.code
    )


class SecurityHeaders:
    """ASGI middleware: the console's security headers on every response outside /api/."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Deletion:
    """Something the console deletes once the user has read what goes with it:
    ``GET {path}/{ref}/delete`` is the confirmation (refused without ``permission``),
    ``POST`` the same path deletes and goes on to ``done``.

    ``show`` and ``delete`` are the service functions, called ``(engine, actor, ref)``
    (``delete`` with the store after the engine when ``with_store``); ``what`` says what
    deleting does, formatted with the thing's fields and ``count`` (its versions or members).
    """

    path: str
    noun: str
    permission: str
    show: Callable[..., Mapping[str, Any] | BaseModel]
    delete: Callable[..., object]
    what: str
    done: str
    #: the field that names it in a path
    key: str = "id"
    #: "Back" goes to the thing's own page (else to ``path``, its list)
    back_to_page: bool = True
    with_store: bool = False


def add_deletion(router: APIRouter, d: Deletion) -> None:
    """The two routes of ``d`` on ``router``."""

    def confirm(request: Request, ctx: Ctx, actor: Actor, ref: str) -> Response:
        actor.require(d.permission)  # before saying whether it exists
        row = d.show(ctx.engine, actor, ref)
        thing = row.model_dump() if isinstance(row, BaseModel) else dict(row)
        at = f"{d.path}/{thing[d.key]}"
        count = len(thing.get("versions") or thing.get("members") or [])
        return confirm_page(
            request,
            actor,
            title=f"Delete {d.noun} {thing['name']}",
            what=d.what.format_map({**thing, "count": count}),
            action=f"{at}/delete",
            button=f"Delete {d.noun.split()[-1]}",
            back=at if d.back_to_page else d.path,
        )

    def delete(ctx: Ctx, actor: Actor, ref: str) -> Response:
        if d.with_store:
            d.delete(ctx.engine, ctx.store, actor, ref)
        else:
            d.delete(ctx.engine, actor, ref)
        return see_other(d.done)

    router.add_api_route(f"{d.path}/{{ref}}/delete", confirm, methods=["GET"])
    router.add_api_route(f"{d.path}/{{ref}}/delete", delete, methods=["POST"])
