"""Prometheus figures of the API and the job system.

- ``pikfix_api_request_duration_seconds{method,route,status}``: measured here, labelled by the route
  *template* (``/v1/jobs/{job_id}``), never the raw path, so ids cannot explode the label set.
- ``pikfix_jobs{status}`` and ``pikfix_job_duration_seconds``: read from the database at scrape time,
  so they cover every worker on every machine (the API never sees a job finish).
- ``pikfix_queue_depth{queue}``: Redis ``LLEN`` of each Celery queue when the broker is Redis.

Under several uvicorn worker processes, the request histogram lives in prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set up by ``pikfix api``) and is summed over processes
at scrape; the database and queue figures are computed once per scrape either way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db import repository as repo
from db.session import session_scope

log = logging.getLogger(__name__)

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
QUEUES = ("restore", "ingest", "maintenance")
# kombu's Redis transport keeps priority levels other than 0 in lists named "<queue>\x06\x16<priority>".
_PRIORITY_SEP = "\x06\x16"
UNMATCHED_ROUTE = "<unmatched>"

CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ApiMetrics:
    """The request histogram of one app, and the scrape that adds database and queue figures."""

    def __init__(self, database_url: str, broker_url: str | None, timeout_s: float = 2.0) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.timeout_s = timeout_s
        # Not registered anywhere: each scrape builds its own registry (see render), so two apps in one
        # process (tests) never clash on metric names.
        self.requests = Histogram(
            "pikfix_api_request_duration_seconds",
            "Time to answer an API request, by route template and status",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=None,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(self.requests)
        registry.register(_DatabaseCollector(self.database_url))
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            registry.register(_QueueCollector(self.broker_url, self.timeout_s))
        return generate_latest(registry)


class _DatabaseCollector(Collector):
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self) -> Iterable[Metric]:
        try:
            with session_scope(self.database_url, readonly=True) as s:
                counts = repo.jobs_by_status(s)
                buckets, count, total = repo.job_duration_histogram(s, JOB_DURATION_BUCKETS)
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: database figures unavailable: %s", exc)
            yield _scrape_error("database")
            return
        jobs = GaugeMetricFamily("pikfix_jobs", "Jobs per status (from the database)", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        pairs = [(_le(b), c) for b, c in zip(JOB_DURATION_BUCKETS, buckets, strict=True)] + [("+Inf", count)]
        yield HistogramMetricFamily(
            "pikfix_job_duration_seconds",
            "Run time of succeeded jobs (from the database)",
            buckets=pairs,
            sum_value=total,
        )
        yield _scrape_error("database", 0)


class _QueueCollector(Collector):
    def __init__(self, broker_url: str, timeout_s: float) -> None:
        self.broker_url = broker_url
        self.timeout_s = timeout_s

    def collect(self) -> Iterable[Metric]:
        try:
            depths = queue_depths(self.broker_url, QUEUES, self.timeout_s)
        except Exception as exc:
            log.warning("metrics: queue depth unavailable: %s", exc)
            yield _scrape_error("broker")
            return
        gauge = GaugeMetricFamily("pikfix_queue_depth", "Messages waiting in each Celery queue", labels=["queue"])
        for queue, depth in depths.items():
            gauge.add_metric([queue], depth)
        yield gauge
        yield _scrape_error("broker", 0)


def queue_depths(broker_url: str, queues: Iterable[str], timeout_s: float = 2.0) -> dict[str, int]:
    """Messages waiting per queue on a Redis broker, all priority levels summed."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        names = list(queues)
        pipe = client.pipeline(transaction=False)
        for queue in names:
            pipe.llen(queue)
            for priority in range(1, 10):
                pipe.llen(f"{queue}{_PRIORITY_SEP}{priority}")
        lengths = pipe.execute()
    finally:
        client.close()
    return {queue: int(sum(lengths[i * 10 : (i + 1) * 10])) for i, queue in enumerate(names)}


def _scrape_error(source: str, value: int = 1) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(
        f"pikfix_metrics_{source}_error", f"1 when the {source} figures could not be read in this scrape"
    )
    gauge.add_metric([], value)
    return gauge


def _le(bound: float) -> str:
    return repr(float(bound))


class RequestMetricsMiddleware:
    """ASGI middleware timing every HTTP request and labelling it with the matched route's template."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, str, int, float], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.observe(scope.get("method", "GET"), _route_template(scope), status, time.perf_counter() - start)


def _route_template(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


__all__ = ["CONTENT_TYPE", "ApiMetrics", "RequestMetricsMiddleware", "queue_depths"]
