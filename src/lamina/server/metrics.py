"""Prometheus metrics at ``/metrics`` (prometheus-client), one registry per application.

What is counted as it happens (an ASGI middleware around every route):

- ``lamina_http_requests_total{method, route, status}``: ``route`` is the route's
  template (``/api/v1/cvds/{ref}``), never the path a client typed, so the label set
  stays small whatever the clients send; requests no route matched are ``route="other"``;
- ``lamina_http_request_duration_seconds{route}``: a histogram (the agent's bundle and
  commit routes are the sync's durations) with ``DURATION_BUCKETS``: Prometheus's default
  ones plus 60, 70, 80 and 90 ms, so that a p95 below 100 ms (the goal for agent polls)
  shows as a bucket bound below 100 ms;
- ``lamina_http_request_answer_seconds{route}``: the same, from the moment the server has
  read the whole request (its body's last part; a request without a body: its headers)
  to its answer: the server's own part, without the time a client takes to send its body
  (under ``make bench-load`` an agent descheduled between its headers and its body;
  docs/design.md, "Polls under load (session 13)");
- ``lamina_sync_uploaded_bytes_total``: bundle bytes agents uploaded;
  ``lamina_sync_commits_total``: snapshots agents committed (answered 200).

What is read from the database when Prometheus scrapes (a custom collector: a fixed
number of aggregate queries, the dashboard's own):

- ``lamina_devices{state}`` (pending, online, offline, failing, lowdisk; a device
  may be in two), ``lamina_devices_total``, ``lamina_tasks{state}``,
  ``lamina_store_pack_bytes``, ``lamina_store_logical_bytes``, ``lamina_store_packs``,
  ``lamina_events_unacknowledged{severity}``, ``lamina_gc_last_duration_seconds``.

Who may read them (``ServerSettings.metrics``): ``loopback`` (default) answers a
client on the loopback address without a token and anyone else only with a token
holding ``metrics.read`` (administrators); ``token`` always asks for that token;
``open`` answers everyone; ``off`` answers 404.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina.server.context import ServerContext
from lamina.server.security import Principal
from lamina.server.services import dashboard

METRICS_PATH = "/metrics"
METRICS_PERMISSION = "metrics.read"
ACCESS_MODES = ("loopback", "token", "open", "off")
SYNC_BUNDLE_ROUTE = "/api/v1/agent/bundles"
SYNC_COMMIT_ROUTE = "/api/v1/agent/commit"
#: Upper bounds (seconds) of the request-duration histogram: Prometheus's defaults with
#: 10 ms steps from 50 to 100 ms (the defaults jump from 75 to 100 ms, so a poll p95 of
#: 80 ms read as "<= 100 ms" and could not show the goal "< 100 ms" met).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.06, 0.07, 0.075, 0.08, 0.09, 0.1,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

#: Reads the dashboard's counts as the server itself (never a caller's principal).
_SCRAPER = Principal("user", "metrics", "metrics", "system", frozenset({"read"}))


class Metrics:
    """The counters of one application and its registry."""

    def __init__(self, ctx: ServerContext) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lamina_http_requests",
            "HTTP requests by route template, method and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "lamina_http_request_duration_seconds",
            "Time to answer a request, by route template.",
            ["route"],
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.answers = Histogram(
            "lamina_http_request_answer_seconds",
            "Time from a request read whole (its body's last part) to its answer, by route"
            " template.",
            ["route"],
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.sync_bytes = Counter(
            "lamina_sync_uploaded_bytes",
            "Bundle bytes uploaded by agents.",
            registry=self.registry,
        )
        self.commits = Counter(
            "lamina_sync_commits",
            "Snapshots committed by agents.",
            registry=self.registry,
        )
        self.registry.register(FleetCollector(ctx))

    def observe(
        self, method: str, route: str, status: int, seconds: float, body: int, answer: float
    ) -> None:
        """Count a request that took ``seconds``, ``answer`` of them after it was read whole."""
        self.requests.labels(method, route, str(status)).inc()
        self.durations.labels(route).observe(seconds)
        self.answers.labels(route).observe(answer)
        if status < 400 and method == "POST":
            if route == SYNC_BUNDLE_ROUTE:
                self.sync_bytes.inc(body)
            elif route == SYNC_COMMIT_ROUTE:
                self.commits.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class FleetCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def describe(self) -> list[Metric]:
        return []  # no queries when the collector is registered

    def collect(self) -> Iterator[Metric]:
        g = dashboard.gauges(self.ctx.engine, _SCRAPER)
        devices = GaugeMetricFamily(
            "lamina_devices",
            "Devices by health state (a device may count twice).",
            labels=["state"],
        )
        for state, n in g.summary.counts.items():
            devices.add_metric([state], n)
        yield devices
        yield GaugeMetricFamily("lamina_devices_total", "Enrolled devices.", value=g.summary.total)
        tasks = GaugeMetricFamily("lamina_tasks", "Tasks by state.", labels=["state"])
        for state, n in sorted(g.tasks.items()):
            tasks.add_metric([state], n)
        yield tasks
        usage = g.summary.usage
        if usage is not None:
            yield GaugeMetricFamily(
                "lamina_store_pack_bytes", "Bytes in the store's packs.", value=usage.pack_bytes
            )
            yield GaugeMetricFamily(
                "lamina_store_logical_bytes",
                "Bytes the snapshots describe (before deduplication and compression).",
                value=usage.logical_bytes,
            )
        yield GaugeMetricFamily("lamina_store_packs", "Packs in the store.", value=g.packs)
        events = GaugeMetricFamily(
            "lamina_events_unacknowledged", "Events not acknowledged yet.", labels=["severity"]
        )
        for severity, n in g.events.items():
            events.add_metric([severity], n)
        yield events
        if g.gc_seconds is not None:
            yield GaugeMetricFamily(
                "lamina_gc_last_duration_seconds",
                "How long the store's last garbage collection took.",
                value=g.gc_seconds,
            )


def _route(scope: Scope) -> str:
    """The matched route's template with its router's prefix, e.g. ``/api/v1/cvds/{ref}``.

    FastAPI may put the route as its router declared it in the scope (without the
    prefix ``include_router`` gave): the prefix is the leading segments of the path
    that the template does not account for, checked against the route's own pattern.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    regex = getattr(route, "path_regex", None)
    if not isinstance(template, str) or regex is None:
        return "other"
    path = str(scope.get("path", ""))
    extra = path.count("/") - template.count("/")
    if extra < 0:
        return "other"
    prefix = "/".join(path.split("/")[: extra + 1])
    if not regex.match(path[len(prefix) :]):
        return "other"
    return prefix + template


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestMetrics:
    """ASGI middleware: counts every HTTP request once it is answered."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = received = time.perf_counter()
        status = 500
        body = 0

        async def counting_receive() -> Message:
            nonlocal body, received
            message = await receive()
            if message["type"] == "http.request":
                body += len(message.get("body", b""))
                if not message.get("more_body", False):
                    received = time.perf_counter()
            return message

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, counting_receive, remember_status)
        finally:
            ended = time.perf_counter()
            self.metrics.observe(
                scope["method"], _route(scope), status, ended - started, body, ended - received
            )


__all__ = [
    "ACCESS_MODES",
    "CONTENT_TYPE_LATEST",
    "DURATION_BUCKETS",
    "METRICS_PATH",
    "METRICS_PERMISSION",
    "Metrics",
    "RequestMetrics",
    "is_loopback",
]
