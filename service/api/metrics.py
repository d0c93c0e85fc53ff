"""Prometheus metrics: what the observability middleware records, and `GET /metrics`.

Each app has its own registry (several apps in one process, as in the tests, never share counts).
Routes are labelled by their template (`/v2/models/{model_name}/infer`), never by the raw path,
so that a scanner's 404s cannot grow the number of series; a path no route matches is
`<unmatched>`.

Decoded tensor elements are counted by `service.telemetry.count_elements`, called where the core
decodes a tensor: one integer addition on the current request's record, published once when the
request ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from service import __version__
from service.api.problems import problem_responses
from service.telemetry import RequestRecord

PREFIX = "loss_service"
# Any other method a client makes up is counted as `other`: labels stay a bounded set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds: from a cached /healthz to a computation at the default 120 s request timeout.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
# Bytes: 256 B to 1 GiB in powers of 4 (the default body limit is 512 MiB).
SIZE_BUCKETS = tuple(float(256 * 4**i) for i in range(12))


class _BackendCollector(Collector):
    """`loss_service_backend_info{backend, device, version} 1`, read from the app at scrape time."""

    def __init__(self, backend: Callable[[], Any]) -> None:
        self._backend = backend

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            f"{PREFIX}_backend_info",
            "The array backend this process computes on (1 for the one in use)",
            labels=["backend", "device", "version"],
        )
        backend = self._backend()
        if backend is not None:
            info.add_metric([backend.name, backend.device, __version__], 1.0)
        yield info


@dataclass(frozen=True)
class _Children:
    """One request's labelled series, looked up once per label set."""

    requests: Counter
    latency: Histogram
    request_bytes: Histogram
    response_bytes: Histogram
    elements: Counter


class Metrics:
    """The service's metrics, in a registry of their own."""

    def __init__(self, backend: Callable[[], Any] = lambda: None) -> None:
        # No `_created` series beside every counter and histogram: they double the series count
        # in the text format and Prometheus does not use them there. (A process-wide switch.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        route_labels = ["method", "route", "status"]
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests answered", route_labels, registry=r
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from the request's arrival to the end of its response",
            route_labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_bytes = Histogram(
            f"{PREFIX}_request_size_bytes",
            "Request body size (Content-Length, or the bytes read when it is absent)",
            ["method", "route"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.response_bytes = Histogram(
            f"{PREFIX}_response_size_bytes",
            "Response body size",
            ["method", "route"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.elements = Counter(
            f"{PREFIX}_elements_processed",
            "Tensor elements decoded from requests",
            ["route"],
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Error responses by RFC 9457 problem type (under /v2: the type of the status)",
            ["type", "status"],
            registry=r,
        )
        self.in_progress = Gauge(
            f"{PREFIX}_requests_in_progress", "HTTP requests being served", registry=r
        )
        self._children: dict[tuple[str, str, int], _Children] = {}
        r.register(_BackendCollector(backend))
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def observe(self, record: RequestRecord, duration_s: float) -> None:
        method = record.method if record.method in METHODS else "other"
        key = (method, record.route, record.status)
        children = self._children.get(key)
        if children is None:  # once per (method, route, status): labels() takes a lock
            status = str(record.status)
            children = self._children[key] = _Children(
                requests=self.requests.labels(method, record.route, status),
                latency=self.latency.labels(method, record.route, status),
                request_bytes=self.request_bytes.labels(method, record.route),
                response_bytes=self.response_bytes.labels(method, record.route),
                elements=self.elements.labels(record.route),
            )
        children.requests.inc()
        children.latency.observe(duration_s)
        children.request_bytes.observe(record.request_bytes)
        children.response_bytes.observe(record.response_bytes)
        if record.elements:
            children.elements.inc(record.elements)
        if record.problem_type is not None:
            self.errors.labels(record.problem_type, str(record.status)).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format `accept` asks for (Prometheus text, or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


router = APIRouter(tags=["observability"])


@router.get(
    "/metrics",
    name="metrics",
    summary="Prometheus metrics (text format; OpenMetrics on request)",
    response_class=Response,
    responses={
        200: {
            "description": "The metrics in Prometheus' text exposition format",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        },
        **problem_responses(500),
    },
)
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)
