"""The admin side's HTTP client: where the server is and who we are.

``lamina login URL --user NAME`` saves ``{"url", "token"}`` to
``$XDG_CONFIG_HOME/lamina/login.json`` (mode 0600); ``LAMINA_URL`` and
``LAMINA_TOKEN`` override it. ``LAMINA_CA_CERT`` names a CA bundle for TLS.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.client_tls import bundle_context, system_context
from lamina.errors import AuthError, BackendError, LaminaError, UsageError, from_status
from lamina.store.atomic import write_atomic

if TYPE_CHECKING:
    # httpx is imported where a request is made: every ``lamina`` command loads this
    # module (the admin command groups use it), and only those groups need httpx.
    import httpx


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "lamina" / "login.json"


def save_login(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps({"url": url, "token": token}).encode(), 0o600)
    return path


def forget_login() -> bool:
    """Remove the saved session; True if there was one."""
    try:
        config_path().unlink()
    except FileNotFoundError:
        return False
    return True


def error_from(r: httpx.Response) -> LaminaError:
    try:
        doc = r.json()
        message = str(doc.get("message") or doc)
    except ValueError:
        message = r.text[:200] or r.reason_phrase
    return from_status(r.status_code, message)


def verify_setting() -> ssl.SSLContext:
    """System CAs, or the CA bundle named by ``LAMINA_CA_CERT``: one context per process
    for each (``client_tls``)."""
    ca = os.environ.get("LAMINA_CA_CERT")
    return bundle_context(ca) if ca else system_context()


class Api:
    def __init__(self, url: str, token: str | None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.token = token
        self.http = httpx.Client(
            base_url=self.url + "/api/v1", headers=headers, timeout=120, verify=verify_setting()
        )

    @classmethod
    def from_login(cls) -> Api:
        url = os.environ.get("LAMINA_URL")
        token = os.environ.get("LAMINA_TOKEN")
        if not (url and token):
            try:
                saved = json.loads(config_path().read_text())
            except FileNotFoundError as e:
                raise AuthError(
                    "not logged in: run `lamina login URL --user NAME` or set LAMINA_URL and LAMINA_TOKEN"
                ) from e
            url = url or saved["url"]
            token = token or saved["token"]
        return cls(str(url), token)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.InvalidURL as e:  # a name typed with control characters in it
            raise UsageError(f"not a valid name or id in {path!r}: {e}") from e
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach the server at {self.url}: {e}") from e
        if r.status_code >= 400:
            raise error_from(r)
        if r.status_code == 204 or not r.content:
            return None
        ctype = r.headers.get("content-type", "")
        return r.json() if ctype.startswith("application/json") else r.content

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.call("POST", path, json=json, **kw)

    def put(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.call("PUT", path, json=json, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.call("DELETE", path, **kw)
