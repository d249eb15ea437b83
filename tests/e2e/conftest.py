"""Whole-system fixtures: real `lamina server` processes, admins and agents through the CLI."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.invoke import invoke, subprocesses_wanted
from tests.conftest import STARTUP_TIMEOUT, _log_excerpt, _stop_process, copy_migrated_sqlite

LAMINA = [sys.executable, "-m", "lamina.cli"]
ADMIN_PASSWORD = "admin-password-123"
#: Its sitecustomize.py gives the servers ``ServerProc`` starts Argon2 at its lowest cost.
SERVER_SITE = Path(__file__).parent / "server_site"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProc:
    """One `lamina server` process; ``restart`` keeps its port and data."""

    data: Path
    extra: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    tls: tuple[Path, Path] | None = None
    #: A data folder that does not exist yet starts with a copy of the migrated SQLite
    #: database (tests/conftest.py), so the server does not run Alembic; False for a
    #: test about how the server creates its database.
    seed_database: bool = True

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> ServerProc:
        self.starts += 1
        if self.seed_database and not self.data.exists() and "--db" not in self.extra:
            self.data.mkdir(parents=True)
            copy_migrated_sqlite(self.data / "lamina.db")
        log = self.data.parent / f"server-{self.port}-{self.starts}.log"
        self.log = log
        path = os.pathsep.join(filter(None, [str(SERVER_SITE), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "LAMINA_ADMIN_PASSWORD": ADMIN_PASSWORD, "PYTHONPATH": path}
        tls = ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])] if self.tls else []
        args = [*LAMINA, "server", "--data", str(self.data), "--port", str(self.port)]
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [*args, *self.extra, *tls], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            return self._wait_ready(log)
        except BaseException:
            # A server that did not answer in time must not outlive the test that gave up
            # on it (on a loaded box it may still finish starting, and then run forever).
            _stop_process(self.proc)
            raise

    def _wait_ready(self, log: Path) -> ServerProc:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        verify = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else True
        with ready_probe(verify) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"lamina server exited {self.proc.returncode}:\n{_log_excerpt(log)}"
                    )
                if probe(self.url):
                    return self
                time.sleep(0.05)
        raise RuntimeError(
            f"lamina server did not answer in {STARTUP_TIMEOUT:.0f} s:\n{_log_excerpt(log)}"
        )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc:
            if self.tls:
                close_lingering_connections()
            _stop_process(self.proc)


@contextlib.contextmanager
def ready_probe(verify: ssl.SSLContext | bool) -> Iterator[Callable[[str], bool]]:
    """``probe(url)``: does the server at ``url`` answer its health check yet? One HTTP
    client for all the polls of a start: a new one per poll (``httpx.get``) builds an SSL
    context from the CA bundle each time, ~50 ms of CPU, 20 times a second, taken from the
    server that is starting on the same two cores."""
    with httpx.Client(timeout=1, verify=verify) as client:

        def probe(url: str) -> bool:
            try:
                return client.get(url + "/api/v1/health").status_code == 200
            except httpx.HTTPError:
                return False

        yield probe


def close_lingering_connections() -> None:
    """Close the keep-alive connections that the `lamina` commands run in this process left
    open (the CLI's HTTP client is freed by the garbage collector, its process being
    expected to exit). A TLS server waits for such a connection's TLS shutdown until its
    graceful-shutdown timeout (5 s) before it exits; a plain HTTP server closes it at once."""
    gc.collect()


class Lamina:
    """The `lamina` command as one person (own config folder) or one endpoint would run it:
    its ``main()`` in this process (tests/cli/invoke.py), or in a subprocess when
    ``process`` (tests about the process) or ``LAMINA_TESTS_SUBPROCESS=1``."""

    def __init__(
        self, home: Path, env: dict[str, str] | None = None, process: bool = False
    ) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(home), **(env or {})}
        self.env.pop("LAMINA_URL", None)
        self.env.pop("LAMINA_TOKEN", None)
        self.process = process or subprocesses_wanted(self.env)

    def run(
        self, *args: str, ok: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        if self.process:
            p = subprocess.run(
                [*LAMINA, *args],
                capture_output=True,
                text=True,
                env=self.env,
                input=input,
                timeout=timeout,
            )
        else:
            p = invoke(args, self.env, input)
        if ok and p.returncode != 0:
            raise AssertionError(
                f"lamina {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
            )
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def login(self, url: str, user: str = "admin", password: str = ADMIN_PASSWORD) -> Lamina:
        self.run("login", url, "--user", user, "--password-stdin", input=password + "\n")
        return self


@dataclass
class Deployment:
    """Servers sharing one store, and how to reach the store directly."""

    servers: list[ServerProc]
    store_args: list[str]
    tmp: Path

    @property
    def url(self) -> str:
        return self.servers[0].url

    def url_for(self, i: int) -> str:
        return self.servers[i % len(self.servers)].url


def _deployment(tmp: Path, extra: list[str], count: int) -> Iterator[Deployment]:
    servers: list[ServerProc] = []
    try:  # a second server that does not start must not leave the first one running
        first = ServerProc(tmp / "server-a", extra).start()
        servers.append(first)
        # Scale-out: every server gets the same key file (copied from the first) and the
        # same db and store.
        for i in range(1, count):
            data = tmp / f"server-{'abcdefg'[i]}"
            data.mkdir()
            (data / "keys.json").write_bytes((first.data / "keys.json").read_bytes())
            os.chmod(data / "keys.json", 0o600)
            servers.append(ServerProc(data, extra).start())
        yield Deployment(servers, ["--data", str(first.data), *extra], tmp)
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(params=["embedded", pytest.param("scaleout", marks=pytest.mark.e2e)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """The embedded default (one server, SQLite + folder), and the scale-out shape
    (two servers on one PostgreSQL database and one S3 bucket)."""
    if request.param == "embedded":
        yield from _deployment(tmp_path, [], 1)
    else:
        db = request.getfixturevalue("pg_db_url")
        store = request.getfixturevalue("s3_url")
        yield from _deployment(tmp_path, ["--db", db, "--store", store], 2)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Deployment]:
    yield from _deployment(tmp_path, [], 1)


@pytest.fixture
def person(tmp_path: Path) -> Callable[[str], Lamina]:
    def make(name: str) -> Lamina:
        return Lamina(tmp_path / "people" / name)

    return make
