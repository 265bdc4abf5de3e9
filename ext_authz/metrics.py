"""Prometheus metrics (SPEC §9), one object built by the composition root.

With `workers > 1` the supervisor sets PROMETHEUS_MULTIPROC_DIR before the workers
start, so prometheus-client writes each worker's values to shared files and the
HTTP port sums them (`MultiProcessCollector`).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["Metrics", "render_metrics"]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY

        reg = registry if registry is not None else REGISTRY
        self.checks = Counter(
            "ext_authz_checks",
            "Checks by application, result, method and transport (grpc or http)",
            ["app", "result", "method", "transport"],
            registry=reg,
        )
        self.check_latency = Histogram(
            "ext_authz_check_duration_seconds",
            "Time to answer one Check",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=reg,
        )
        self.idp_requests = Counter(
            "ext_authz_idp_requests",
            "Requests to the IdP by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=reg,
        )
        self.cache = Counter(
            "ext_authz_cache_requests",
            "Session and credential cache lookups",
            ["cache", "result"],
            registry=reg,
        )
        self.store_errors = Counter(
            "ext_authz_store_errors",
            "Store operations that failed",
            ["operation"],
            registry=reg,
        )
        self.sessions_created = Counter(
            "ext_authz_sessions_created",
            "Sessions created",
            ["app", "via"],
            registry=reg,
        )
        self.sessions_ended = Counter(
            "ext_authz_sessions_ended",
            "Sessions ended by sign-out",
            ["app"],
            registry=reg,
        )
        self.throttled = Counter(
            "ext_authz_throttled",
            "Requests answered 429 by the guessing limits, by application and kind "
            "(credential or login)",
            ["app", "kind"],
            registry=reg,
        )
        self.throttle_started = Counter(
            "ext_authz_throttle_started",
            "Clients that crossed a guessing limit, by application, kind and scope "
            "(client or user)",
            ["app", "kind", "scope"],
            registry=reg,
        )
        self.internal_errors = Counter(
            "ext_authz_internal_errors",
            "Checks that hit an unexpected fault",
            registry=reg,
        )

        # The application table (SPEC §11). Gauges keep the largest worker's value when
        # several workers write them (each worker runs its own outpost client).
        self.applications = Gauge(
            "ext_authz_applications",
            "Applications in the current table, by source (file, authentik, stored)",
            ["source"],
            registry=reg,
            multiprocess_mode="max",
        )
        self.table_refreshes = Counter(
            "ext_authz_table_refreshes",
            "Refreshes of the application table from authentik, by outcome "
            "(ok, unavailable, refused, error, stored)",
            ["outcome"],
            registry=reg,
        )
        self.table_built = Gauge(
            "ext_authz_table_built_timestamp_seconds",
            "When the current application table's applications were fetched (Unix time; "
            "its age is time() minus this)",
            registry=reg,
            multiprocess_mode="min",
        )
        self.authentik_connected = Gauge(
            "ext_authz_authentik_websocket_connected",
            "1 while the outpost websocket to authentik is connected, else 0",
            registry=reg,
            multiprocess_mode="min",
        )

        self.http_connections_refused = Counter(
            "ext_authz_http_connections_refused",
            "Connections an HTTP port refused or closed to make room, by port and reason "
            "(total, peer: refused; evicted: an idle one closed)",
            ["port", "reason"],
            registry=reg,
        )
        self.http_connections = Gauge(
            "ext_authz_http_connections",
            "Open connections of an HTTP port",
            ["port"],
            registry=reg,
            multiprocess_mode="livesum",
        )

        # labels() costs microseconds; the label sets are few (apps x results x methods),
        # so each child is looked up once and kept.
        self._children: dict[tuple[str, ...], Any] = {}

    def count_check(self, app: str, result: str, method: str, transport: str = "grpc") -> None:
        self._child(self.checks, "checks", app, result, method, transport).inc()

    def count_cache(self, cache: str, result: str) -> None:
        self._child(self.cache, "cache", cache, result).inc()

    def _child(self, metric: Any, name: str, *labels: str) -> Any:
        key = (name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_idp(self, endpoint: str, outcome: str) -> None:
        self.idp_requests.labels(endpoint, outcome).inc()


def render_metrics() -> bytes:
    """The exposition text: summed over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)
