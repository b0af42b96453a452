"""Telemetry for Prometheus: HTTP traffic counted in-process, job figures read from the database at
scrape time. Called telemetry, not metrics: in bitplan a metric is a sensitivity measure
(workers/metrics/); the HTTP path stays `/metrics`, Prometheus's convention.

The database row is the truth about a job, so jobs by state, queue depth and job durations are computed
from it when Prometheus scrapes, not counted by the API process (which runs none of the work with
Redis workers and would miss theirs). Each app gets its own registry, so tests can build many apps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.storage import store
from service.storage.db.session import session_scope

__all__ = ["Telemetry", "TelemetryMiddleware"]

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _JobsCollector:
    """Jobs by state, queue depth and the durations of finished jobs, from one database."""

    def __init__(self, url: str):
        self.url = url

    def collect(self) -> Iterator:
        up = GaugeMetricFamily("bitplan_database_up", "1 when the last scrape could read the database.")
        try:
            with session_scope(self.url) as session:
                counts = store.analysis_counts(session)
                spans = store.finished_analysis_spans(session)
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("bitplan_jobs", "Analyses by state.", labels=["state"])
        for state in sorted(set(JOB_STATES) | set(counts)):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily("bitplan_queue_depth", "Analyses waiting to be run (queued rows).")
        depth.add_metric([], counts.get("queued", 0))
        yield depth
        hist = HistogramMetricFamily("bitplan_job_duration_seconds", "Run time of finished analyses.",
                                     labels=["state"])
        for state in ("succeeded", "failed"):
            seconds = [max(0.0, (f - s).total_seconds()) for st, s, f in spans if st == state]
            buckets = [(str(b), sum(1 for x in seconds if x <= b)) for b in JOB_BUCKETS]
            buckets.append(("+Inf", len(seconds)))
            hist.add_metric([state], buckets, sum_value=sum(seconds))
        yield hist


class Telemetry:
    """One app's registry: HTTP counters it records itself and the database-backed job collector."""

    def __init__(self, database_url: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("bitplan_http_requests_total", "HTTP requests by route template and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("bitplan_http_request_duration_seconds", "HTTP request latency by route.",
                                 ["method", "route"], buckets=HTTP_BUCKETS, registry=self.registry)
        self.registry.register(_JobsCollector(database_url))


class TelemetryMiddleware:
    """Counts every HTTP request under its route template (`/v1/analyses/{analysis_id}`), never the raw path,
    so label cardinality stays bounded; unmatched paths count as `unmatched`."""

    def __init__(self, app: ASGIApp, *, telemetry: Telemetry):
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.telemetry.requests.labels(method, template, str(status)).inc()
            self.telemetry.latency.labels(method, template).observe(time.perf_counter() - t0)
