"""Fuzz the API from its own OpenAPI document: no input an administrator can send makes
the server answer 5xx.

Schemathesis generates requests for every operation, valid and invalid, authenticated as
the administrator. The examples are derandomized (the same ones every run) and bounded,
so the run is short and repeatable.

Every operation is fuzzed in this process, through Schemathesis's ASGI transport, against
``create_app(settings)`` -- the application ``lamina server`` serves, on the same kind
of data folder (SQLite, a local store). That leaves out only the HTTP server in front
(uvicorn) and the process boundary, which one small shard crosses: a sample of
operations fuzzed against a real ``lamina server`` process over HTTP.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis.internal.conjecture.engine as hypothesis_engine
import msgpack
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from lamina.config import ServerSettings
from lamina.server.app import create_app
from tests.e2e.conftest import ADMIN_PASSWORD, ServerProc

EXAMPLES = 6  # per operation and mode (valid inputs, invalid inputs)
# The operations are split into shards, each its own test with its own timeout, so that
# xdist spreads them over the workers and a slow machine does not time the whole run out.
SHARDS = 4
# Against the real process: every PROCESS_STRIDE-th operation, fewer examples.
PROCESS_STRIDE = 6
PROCESS_EXAMPLES = 2

# Rejected draws Hypothesis makes before it calls an operation's inputs unsatisfiable
# (458 by default). A negative run where no location can be made invalid rejects every
# draw and sends nothing; at 458 draws those runs were three quarters of the fuzz's time.
# 40 draws with none invalid is still a clear "nothing to negate"; an operation whose
# draws are sometimes invalid gets 100 more draws per invalid one it sent, as before.
UNSATISFIABLE_AFTER = 40

LOGIN = "/api/v1/auth/login"
AGENT_ROUTES = " /api/v1/agent/"
ADMIN = {"user": "admin", "password": ADMIN_PASSWORD}


@schemathesis.serializer("application/vnd.lamina.bundle+msgpack")
def _bundle(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """Upload bundles are msgpack on the wire; any value the schema allows, packed."""
    return bytes(msgpack.packb(value, default=str))


@schemathesis.serializer("application/x-tar")
def _tar(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """Driver packs upload as a tar: the fuzz sends whatever bytes the schema allows
    (never a valid tar), which the server must refuse cleanly."""
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass(frozen=True)
class Target:
    """Where the fuzz sends its requests: ``url`` over HTTP, or ``app`` in this process."""

    url: str
    login: Callable[[], str]
    app: FastAPI | None = None

    def session(self) -> dict[str, str]:
        """A new administrator session: an operation that ends its caller's session
        (``/auth/logout``, a token revoked) must not leave the rest unauthenticated."""
        return {"Authorization": f"Bearer {self.login()}"}

    def schema(self) -> Any:
        headers = self.session()
        if self.app is not None:
            return schemathesis.openapi.from_asgi("/api/v1/openapi.json", self.app, headers=headers)
        return schemathesis.openapi.from_url(
            self.url + "/api/v1/openapi.json", headers=headers, timeout=30
        )


@contextlib.contextmanager
def cheap_fuzz() -> Iterator[None]:
    """The give-up point of a run with nothing to negate (``UNSATISFIABLE_AFTER``) in this
    process; the routes, the inputs and the examples per operation stay as they are.
    (Argon2 is already at its lowest cost here: tests/conftest.py.)"""
    with pytest.MonkeyPatch.context() as mp:
        # A Hypothesis that renamed the constant fails here, loudly, not silently slow.
        mp.setattr(hypothesis_engine, "INVALID_THRESHOLD_BASE", UNSATISFIABLE_AFTER)
        yield


@pytest.fixture(scope="module", autouse=True)
def _cheap_fuzz() -> Iterator[None]:
    with cheap_fuzz():
        yield


@pytest.fixture
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The server's application on a fresh data folder, as ``lamina server`` opens it.
    One per shard: which shards ran before on the same worker (xdist, pytest-randomly's
    order) must not change what a shard's requests find."""
    data = tmp_path_factory.mktemp("fuzz-asgi") / "server"
    app = create_app(ServerSettings(data=data, admin_password=ADMIN_PASSWORD))
    with asgi.get_client(app) as client:

        def login() -> str:
            r = client.post(LOGIN, json=ADMIN)
            r.raise_for_status()
            return str(r.json()["token"])

        yield Target("", login, app)


@pytest.fixture(scope="module")
def process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A real ``lamina server`` process on a fresh data folder, reached over HTTP."""
    server = ServerProc(tmp_path_factory.mktemp("fuzz") / "server", []).start()

    def login() -> str:
        r = httpx.post(server.url + LOGIN, json=ADMIN)
        r.raise_for_status()
        return str(r.json()["token"])

    try:
        yield Target(server.url, login)
    finally:
        server.stop()
        log = getattr(server, "log", None)
        if isinstance(log, Path) and log.exists():
            print(log.read_text(errors="replace")[-4000:])


@dataclass
class FuzzRun:
    """What a fuzz run saw: the operations fuzzed, the answers by status, the operations
    that got at least one answer past the login check (not 401), and the failures (a 5xx,
    or a request the server could not answer)."""

    operations: int
    statuses: Counter[int]
    labels: set[str]
    reached: set[str]
    failures: list[str]

    def unreached(self) -> set[str]:
        """Administrator operations that never answered past the login check. The agent's
        routes are left out: they take a device's token, and the fuzz holds none."""
        return {label for label in self.labels - self.reached if AGENT_ROUTES not in label}


def fuzz_operations(target: Target, chosen: Callable[[int], bool], examples: int) -> FuzzRun:
    """Fuzz the chosen operations (by index in the document)."""
    # Schemathesis's pytest integration (``from_fixture``) fails on this pytest; its
    # Python API drives Hypothesis just as well, one operation at a time.
    schema = target.schema()
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    labels: set[str] = set()
    reached: set[str] = set()
    operations = 0
    for index, result in enumerate(schema.get_all_operations()):
        if not chosen(index):
            continue
        operation = result.ok()
        operations += 1
        labels.add(operation.label)
        # Invalid inputs only where there are inputs to make invalid.
        has_inputs = any(True for _ in operation.iter_parameters()) or bool(
            operation.get_request_payload_content_types()
        )
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_inputs else [])
        headers = target.session()
        call: dict[str, Any] = {"base_url": target.url} if target.app is None else {}
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: schemathesis.Case) -> None:
                r = case.call_and_validate(
                    headers=headers, checks=[not_a_server_error], timeout=60, **call
                )
                statuses[r.status_code] += 1
                if r.status_code != 401:
                    reached.add(operation.label)

            try:
                fuzz()
            except Unsatisfiable:  # e.g. nothing in a path parameter can be made invalid
                continue
            except Exception as e:
                failures.append(f"{operation.label} ({mode.value}): {e}")
    print(f"{operations} operations; answers by status: {sorted(statuses.items())}")
    return FuzzRun(operations, statuses, labels, reached, failures)


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_no_input_makes_the_server_fail(in_process: Target, shard: int) -> None:
    run = fuzz_operations(in_process, lambda index: index % SHARDS == shard, EXAMPLES)
    assert run.operations > 20 // SHARDS  # the document was read, not an empty one
    assert not run.failures, "\n\n".join(run.failures)
    # The run exercised the routes, not only the login check in front of them: every
    # administrator operation answered past it at least once (an operation that ends its
    # own session, /auth/logout, answers 401 only after its first call).
    assert run.reached and run.unreached() == set()
    assert any(code < 300 for code in run.statuses)


@pytest.mark.slow
def test_no_input_makes_the_server_process_fail(process: Target) -> None:
    """The same fuzz through uvicorn and a real ``lamina server``, on a sample of the
    operations: what the in-process shards cannot see (HTTP parsing, the process)."""
    run = fuzz_operations(process, lambda index: index % PROCESS_STRIDE == 0, PROCESS_EXAMPLES)
    assert run.operations > 20 // PROCESS_STRIDE
    assert not run.failures, "\n\n".join(run.failures)
    assert run.reached and run.unreached() == set()
