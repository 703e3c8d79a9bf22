"""Prometheus metrics of the gateway; labels are bounded (method, stage, status code, configured experiment arm,
feedback kind), never ids.

With several worker processes (GATEWAY_WORKERS) each writes its values to prometheus_client's multiprocess
directory and the supervisor exports them merged: counters and histograms summed, and each gauge as its
`multiprocess_mode` says, over the workers alive.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Stage latencies range from ~50 µs (history) to a few seconds (embedding under load).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
STAGES = ("decode", "embed", "search", "history", "popularity", "rerank", "total")
DEGRADABLE_STAGES = ("history",)


class Metrics:
    """The gateway's metrics, registered on the given registry (an isolated one in tests)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.stage_seconds = Histogram(
            "recsys_stage_duration_seconds", "Latency of one pipeline stage.", ["stage"],
            buckets=STAGE_BUCKETS, registry=registry)
        self.requests = Counter(
            "recsys_requests_total", "RPCs handled, by method and gRPC status code.", ["method", "code"],
            registry=registry)
        self.request_seconds = Histogram(
            "recsys_request_duration_seconds", "Latency of an RPC as seen by the server.", ["method"],
            buckets=STAGE_BUCKETS, registry=registry)
        self.degraded = Counter(
            "recsys_degraded_responses_total", "Responses that skipped a stage because a dependency failed.",
            ["stage"], registry=registry)
        for stage in DEGRADABLE_STAGES:
            self.degraded.labels(stage)  # exported as 0 from the start, so ratios exist before the first failure
        self.dependency_up = Gauge(
            "recsys_dependency_up", "1 when the dependency answered the last health check, else 0.",
            ["dependency"], registry=registry, multiprocess_mode="livemin")  # down if any worker finds it down
        self.products_ingested = Counter(
            "recsys_products_ingested_total", "Catalog products embedded and stored.", registry=registry)
        self.catalog_products = Gauge(
            "recsys_catalog_products", "Products in the catalog collection.", registry=registry,
            multiprocess_mode="livemostrecent")  # the latest count any worker read
        self.recommendations = Counter(
            "recsys_recommendations_total", "Recommendation lists served, by experiment arm (\"none\" without).",
            ["experiment"], registry=registry)
        self.feedback = Counter(
            "recsys_feedback_total", "Views, dismissals and purchases recorded, by the user's experiment arm and kind.",
            ["experiment", "kind"], registry=registry)
        self.catalog_batch_queries = Histogram(
            "recsys_catalog_batch_queries", "Queries per catalog batch call (searches or similarity lookups); "
            "above a request's own with SEARCH_BATCH_WINDOW_MS.", buckets=BATCH_BUCKETS, registry=registry)
        self.in_flight = Gauge(
            "recsys_in_flight", "Work in progress under an admission limit (requests, image queries).", ["work"],
            registry=registry, multiprocess_mode="livesum")  # the pod's total; each worker admits up to its limit

    def record_dependencies(self, *, embedder: bool, catalog: bool, history: bool) -> None:
        """Exports whether each dependency answered the last health check."""
        for dependency, up in (("embedder", embedder), ("catalog", catalog), ("history", history)):
            self.dependency_up.labels(dependency).set(1 if up else 0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times the enclosed block as one pipeline stage."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(name).observe(time.perf_counter() - start)
