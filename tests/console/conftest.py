"""Console fixtures: a real `lamina server`, a console session over HTTP, headless Chromium
(Debian's ``chromium`` driven by Playwright) with axe-core injected on demand."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ADMIN_PASSWORD, ServerProc

from lamina.db.engine import make_engine, write_tx
from lamina.server.services import events

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
#: Screenshots of each page land in docs/console/ when LAMINA_SHOTS=1 (so that a test run
#: does not rewrite the pictures the README shows).
SHOTS = Path(__file__).parents[2] / "docs" / "console" if os.environ.get("LAMINA_SHOTS") else None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    s = ServerProc(tmp_path / "server", []).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One server for a module whose tests each make their own names (starting one is slow)."""
    s = ServerProc(tmp_path_factory.mktemp("console") / "server", []).start()
    try:
        yield s
    finally:
        s.stop()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]*)"', html)
    assert m, "the page has no form with a CSRF token"
    return m.group(1)


class Console:
    """The console as one browserless user: cookies kept, CSRF read from the last page."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
        self.csrf = ""

    def get(self, path: str) -> httpx.Response:
        r = self.http.get(path)
        if 'name="csrf"' in r.text:
            self.csrf = csrf_of(r.text)
        return r

    def post(
        self, path: str, data: dict[str, Any] | None = None, csrf: bool = True
    ) -> httpx.Response:
        body = {**(data or {}), **({"csrf": self.csrf} if csrf else {})}
        return self.http.post(path, data=body)

    def login(self, user: str = "admin", password: str = ADMIN_PASSWORD) -> Console:
        self.get("/")
        r = self.post("/login", {"user": user, "password": password})
        assert r.status_code == 303, r.text
        self.get("/")
        return self


def api(url: str, user: str = "admin", password: str = ADMIN_PASSWORD) -> httpx.Client:
    """The JSON API as ``user`` (to set up what a test needs)."""
    token = httpx.post(
        url + "/api/v1/auth/login", json={"user": user, "password": password}
    ).json()["token"]
    return httpx.Client(
        base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def record_event(server: ServerProc, severity: str, target: str, message: str) -> None:
    """An event written into the running server's database, as a service would."""
    engine = make_engine(f"sqlite:///{server.data / 'lamina.db'}")
    try:
        with write_tx(engine) as c:
            events.record(c, severity, "test", target, message)
    finally:
        engine.dispose()


def enroll(url: str, token: str, hostname: str, **facts: Any) -> dict[str, Any]:
    """Enroll a device over the agent API (as `lamina agent enroll` does) without an endpoint."""
    body = {
        "token": token,
        "facts": {"machine_id": f"m-{abs(hash(hostname))}", "hostname": hostname, **facts},
    }
    r = httpx.post(url + "/api/v1/agent/enroll", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


# --- the browser -------------------------------------------------------------------------
@dataclass
class Browser:
    page: Any
    url: str
    csp_violations: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def go(self, path: str) -> None:
        self.page.goto(self.url + path)

    def axe(self) -> list[dict[str, Any]]:
        """Serious and critical axe-core violations on the current page."""
        self.page.evaluate(AXE.read_text())
        result = self.page.evaluate("async () => JSON.stringify(await axe.run(document))")
        return [
            v for v in json.loads(result)["violations"] if v["impact"] in ("serious", "critical")
        ]

    def check(self, shot: str | None = None) -> None:
        """No serious axe violation, no CSP violation, no script run from page text."""
        bad = self.axe()
        assert not bad, json.dumps(
            [(v["id"], [n["html"] for n in v["nodes"][:3]]) for v in bad], indent=1
        )
        assert not self.csp_violations, self.csp_violations
        assert not self.dialogs, self.dialogs
        if shot and SHOTS:
            SHOTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)


@pytest.fixture
def browser(server: ServerProc) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is needed: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        ctx = b.new_context(accept_downloads=True, viewport={"width": 1200, "height": 800})
        page = ctx.new_page()
        page.set_default_timeout(60_000)
        out = Browser(page, server.url)
        page.on(
            "console",
            lambda m: (
                out.csp_violations.append(m.text) if "Content Security Policy" in m.text else None
            ),
        )
        page.on("dialog", lambda d: (out.dialogs.append(d.message), d.dismiss()))
        try:
            yield out
        finally:
            ctx.close()
            b.close()
