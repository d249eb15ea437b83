"""Fuzz the API from its own OpenAPI document: no input an administrator can send makes
the server answer 5xx.

Schemathesis generates requests for every operation, valid and invalid, against a real
``lamina server`` (SQLite, tmp data), authenticated as the administrator. The examples
are derandomized (the same ones every run) and bounded, so the run is short and repeatable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.e2e.conftest import ADMIN_PASSWORD, ServerProc

EXAMPLES = 6  # per operation and mode (valid inputs, invalid inputs)
# The operations are split into shards, each its own test with its own timeout, so that
# xdist spreads them over the workers and a slow machine does not time the whole run out.
SHARDS = 4


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
    url: str
    headers: dict[str, str]

    def session(self) -> dict[str, str]:
        """A new administrator session: an operation that ends its caller's session
        (``/auth/logout``, a token revoked) must not leave the rest unauthenticated."""
        r = httpx.post(
            self.url + "/api/v1/auth/login", json={"user": "admin", "password": ADMIN_PASSWORD}
        )
        r.raise_for_status()
        return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    server = ServerProc(tmp_path_factory.mktemp("fuzz") / "server", []).start()
    try:
        r = httpx.post(
            server.url + "/api/v1/auth/login", json={"user": "admin", "password": ADMIN_PASSWORD}
        )
        r.raise_for_status()
        yield Target(server.url, {"Authorization": f"Bearer {r.json()['token']}"})
    finally:
        server.stop()
        log = getattr(server, "log", None)
        if isinstance(log, Path) and log.exists():
            print(log.read_text(errors="replace")[-4000:])


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_no_input_makes_the_server_fail(target: Target, shard: int) -> None:
    # Schemathesis's pytest integration (``from_fixture``) fails on this pytest; its
    # Python API drives Hypothesis just as well, one operation at a time.
    schema = schemathesis.openapi.from_url(
        target.url + "/api/v1/openapi.json", headers=target.headers, timeout=30
    )
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = 0
    for index, result in enumerate(schema.get_all_operations()):
        if index % SHARDS != shard:
            continue
        operation = result.ok()
        operations += 1
        # Invalid inputs only where there are inputs to make invalid.
        has_inputs = any(True for _ in operation.iter_parameters()) or bool(
            operation.get_request_payload_content_types()
        )
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_inputs else [])
        headers = target.session()
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: schemathesis.Case) -> None:
                r = case.call_and_validate(
                    base_url=target.url,
                    headers=headers,
                    checks=[not_a_server_error],
                    timeout=60,
                )
                statuses[r.status_code] += 1

            try:
                fuzz()
            except Unsatisfiable:  # e.g. nothing in a path parameter can be made invalid
                continue
            except Exception as e:
                failures.append(f"{operation.label} ({mode.value}): {e}")
    print(f"{operations} operations; answers by status: {sorted(statuses.items())}")
    assert operations > 20 // SHARDS  # the document was read, not an empty one
    assert not failures, "\n\n".join(failures)
    # The run exercised the routes, not only the login check in front of them.
    assert sum(n for code, n in statuses.items() if code < 300) > operations
