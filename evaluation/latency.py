"""Processing time: a short closed-loop load run against the gateway, with per-stage percentiles.

``concurrency`` clients each send Recommend(image, user_id) back to back for ``seconds``. Stage
percentiles come from the gateway's own Prometheus histograms (the difference of their buckets before
and after the run, interpolated inside a bucket as PromQL's histogram_quantile does); the end-to-end
latency seen by the clients is measured exactly.
"""

import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry

from evaluation.metrics import histogram_quantile
from gateway.metrics import STAGES
from harness.load import Outcome, closed_loop, timed
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc

QUANTILES = (0.5, 0.9, 0.99)
STAGE_HISTOGRAM = "recsys_stage_duration_seconds"

Buckets = dict[str, dict[float, float]]


def stage_buckets(registry: CollectorRegistry) -> Buckets:
    """Cumulative bucket counts of the stage-duration histogram, per stage."""
    buckets: Buckets = {stage: {} for stage in STAGES}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == f"{STAGE_HISTOGRAM}_bucket":
                buckets[sample.labels["stage"]][float(sample.labels["le"])] = sample.value
    return buckets


@dataclass(frozen=True)
class LoadRun:
    """What a load run measured: requests, throughput, client latencies and stage percentiles (seconds)."""

    requests: int
    errors: int
    seconds: float
    concurrency: int
    client: dict[float, float]
    stages: dict[str, dict[float, float]]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


async def load_run(stub: pb_grpc.RecommenderStub, registry: CollectorRegistry, images: Sequence[bytes],
                   users: Sequence[str], seconds: float, concurrency: int) -> LoadRun:
    """Sends image queries for ``seconds`` from ``concurrency`` clients; see the module docstring."""
    before = stage_buckets(registry)

    def send(number: int) -> Awaitable[Outcome]:
        request = pb.RecommendRequest(image=images[number % len(images)], user_id=users[number % len(users)])
        return timed("image", stub.Recommend(request, timeout=10))

    started = time.monotonic()
    outcomes = await closed_loop(send, concurrency, seconds)
    elapsed = time.monotonic() - started
    latencies = [outcome.seconds for outcome in outcomes if outcome.ok]
    after = stage_buckets(registry)
    stages = {stage: {q: histogram_quantile(q, {bound: after[stage][bound] - before[stage].get(bound, 0.0)
                                                 for bound in after[stage]}) for q in QUANTILES}
              for stage in STAGES if after[stage]}
    client_quantiles = {q: float(np.quantile(latencies, q)) if latencies else float("nan") for q in QUANTILES}
    return LoadRun(len(latencies), len(outcomes) - len(latencies), elapsed, concurrency, client_quantiles, stages)
