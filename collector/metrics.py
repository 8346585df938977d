"""Prometheus metrics, in a registry of the app's own (two apps in one process never mix):

- ``mailpath_collector_requests_total{method, route, status}`` and
  ``mailpath_collector_request_duration_seconds{method, route}`` (route is the path template,
  e.g. ``/v1/findings/{finding_id}``, or ``unmatched``);
- ``mailpath_collector_findings_ingested_total``: findings stored (new ones only);
- ``mailpath_collector_findings_rejected_total{reason}``: ``POST /v1/findings`` batches refused,
  by reason (too-large, bad-encoding, unsupported-media-type, malformed-json, not-a-batch, wrong-host,
  unknown-schema, schema-violation, unauthorized, forbidden);
- ``mailpath_collector_latest_states{cause}``: targets (agent × target × port) whose latest
  finding has this cause, counted in the database at each scrape;
- ``mailpath_collector_agent_last_seen_timestamp_seconds{agent}``: when each agent's last batch
  was received (read at each scrape; the fleet's size bounds the labels).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import get_args

from mailpath.agent.finding import Cause
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

CAUSES = get_args(Cause)
PREFIX = "mailpath_collector"


class FleetGauges:
    """A custom collector, read from the database when scraped: targets per cause now, and
    when each agent last reported (for an alert on agents that stopped)."""

    def __init__(self, read: Callable[[], tuple[dict[str, int], dict[str, dt.datetime | None]]]) -> None:
        self.read = read

    def describe(self):
        return []  # no pre-registration query

    def collect(self):
        try:
            counts, last_seen = self.read()
        except Exception:  # the database is down: /readyz says so; the scrape still answers
            return
        states = GaugeMetricFamily(
            f"{PREFIX}_latest_states",
            "Targets (agent x target x port) whose latest finding has this cause.",
            labels=["cause"],
        )
        for cause in sorted({*CAUSES, *counts}):
            states.add_metric([cause], counts.get(cause, 0))
        yield states
        seen = GaugeMetricFamily(
            f"{PREFIX}_agent_last_seen_timestamp_seconds",
            "When the agent's last batch was received (Unix time); absent before its first.",
            labels=["agent"],
        )
        for agent, at in sorted(last_seen.items()):
            if at is not None:
                seen.add_metric([agent], at.timestamp())
        yield seen


class Metrics:
    def __init__(self, fleet: Callable[[], tuple[dict[str, int], dict[str, dt.datetime | None]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.ingested = Counter(
            f"{PREFIX}_findings_ingested", "Findings stored (new ones).", registry=self.registry
        )
        self.rejected = Counter(
            f"{PREFIX}_findings_rejected",
            "POST /v1/findings batches refused, by reason (nothing of them is stored).",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(FleetGauges(fleet))


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, path, str(status["code"])).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - start)
