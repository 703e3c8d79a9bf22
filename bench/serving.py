"""Layers 2 and 3: Triton alone and the gateway end to end, at the same concurrency, in alternating rounds."""

import contextlib
import os
import statistics
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient

from bench.processes import cpu_seconds_by_role
from bench.workload import ImageSet
from gateway.domain import ModelInfo
from harness.gateway import spawned
from harness.load import LoadResult, Outcome, Send, measure, timed, warm_up
from model_export.triton_config import INPUT_NAME, OUTPUT_NAME
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from stack.net import free_port

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
TIMEOUT_S = 30.0
STAGE_METRIC = "recsys_stage_duration_seconds"
WARMUP_ROUNDS = 2  # the first calls of a batch shape are slow (TorchScript specialises the graph)
TRITON, GATEWAY, ROUND_TRIP = "triton", "gateway", "gateway health check"


class TritonLoad:
    """Sends image i of the set to Triton as one [1, 224, 224, 3] request, as the gateway does."""

    def __init__(self, url: str, model: ModelInfo, images: ImageSet) -> None:
        self._client = InferenceServerClient(url, channel_args=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self._model = model
        self._pixels = images.pixels

    def send(self, index: int) -> Awaitable[Outcome]:
        request = InferInput(INPUT_NAME, [1, *self._pixels.shape[1:]], "UINT8")
        request.set_data_from_numpy(self._pixels[index % len(self._pixels)][np.newaxis])
        return timed(TRITON, self._client.infer(self._model.name, [request], model_version=self._model.version,
                                                outputs=[InferRequestedOutput(OUTPUT_NAME)], client_timeout=TIMEOUT_S))

    async def close(self) -> None:
        await self._client.close()


class GatewayLoad:
    """Sends image i of the set to the gateway's Recommend as a shopper with recorded views."""

    def __init__(self, address: str, images: ImageSet, users: int) -> None:
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._channel = grpc.aio.insecure_channel(address, options=options)
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._encoded = images.encoded
        self._users = users

    @staticmethod
    def user(index: int) -> str:
        return f"bench-user-{index}"

    async def record_views(self, product_ids: Sequence[str], per_user: int) -> None:
        """Gives every shopper `per_user` recorded views of catalog products."""
        for user in range(self._users):
            for view in range(per_user):
                product_id = product_ids[(user * per_user + view) % len(product_ids)]
                await self._stub.RecordView(pb.RecordViewRequest(user_id=self.user(user), product_id=product_id),
                                            timeout=TIMEOUT_S)

    def send(self, index: int) -> Awaitable[Outcome]:
        return self._recommend(index, self.user(index % self._users))

    def send_anonymous(self, index: int) -> Awaitable[Outcome]:
        """The same image without a shopper: no history is read."""
        return self._recommend(index, "")

    def _recommend(self, index: int, user_id: str) -> Awaitable[Outcome]:
        return timed(GATEWAY, self._stub.Recommend(pb.RecommendRequest(
            image=self._encoded[index % len(self._encoded)], limit=10, user_id=user_id), timeout=TIMEOUT_S))

    def check_health(self, index: int) -> Awaitable[Outcome]:
        """A standard health check over the same channel: the cost of any call to the gateway, with no work."""
        return timed(ROUND_TRIP, self._health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S))

    async def close(self) -> None:
        await self._channel.close()


@dataclass(frozen=True)
class GatewayProcess:
    pid: int
    address: str
    metrics_url: str


@contextlib.asynccontextmanager
async def gateway_process(triton_url: str, model_version: str, redis_url: str, data_dir: Path, log_path: Path,
                          settings: Mapping[str, str] | None = None, code: Path | None = None,
                          timeout_s: float = 120.0) -> AsyncIterator[GatewayProcess]:
    """The gateway as it is deployed (`python -m gateway`), in its own process, on free ports, serving
    `model_version` of the model, with other `settings` (environment variables) and, given `code`, that checkout's
    gateway instead of this tree's."""
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "TRITON_URL": triton_url, "MODEL_VERSION": model_version, "REDIS_URL": redis_url,
           "DATA_DIR": str(data_dir.resolve()), "GRPC_ADDRESS": f"127.0.0.1:{port}", "METRICS_PORT": str(metrics_port),
           **(settings or {})}
    if code:
        env["PYTHONPATH"] = str(code)
    async with spawned([sys.executable, "-m", "gateway"], f"127.0.0.1:{port}", env, log_path, timeout_s,
                       cwd=code) as process:
        yield GatewayProcess(process.pid, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics")


def stage_seconds(metrics_text: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of each pipeline stage in the gateway's Prometheus exposition."""
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != STAGE_METRIC:
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage", "")
            if sample.name == f"{STAGE_METRIC}_sum":
                found.setdefault(stage, [0.0, 0.0])[0] = sample.value
            elif sample.name == f"{STAGE_METRIC}_count":
                found.setdefault(stage, [0.0, 0.0])[1] = sample.value
    return {stage: (total, count) for stage, (total, count) in found.items()}


def stage_means_ms(before: Mapping[str, tuple[float, float]], after: Mapping[str, tuple[float, float]]
                   ) -> dict[str, float]:
    """Mean milliseconds per stage between two scrapes."""
    means = {}
    for stage, (total, count) in after.items():
        total_before, count_before = before.get(stage, (0.0, 0.0))
        if count > count_before:
            means[stage] = (total - total_before) / (count - count_before) * 1000
    return means


@dataclass(frozen=True)
class ServingRun:
    """One closed-loop run of one layer under one core placement, the CPU milliseconds each process spent per
    request, and (for the gateway) its stage means in milliseconds."""

    layer: str
    placement: str
    round: int
    load: LoadResult
    cpu_ms_per_request: dict[str, float]
    stage_ms: dict[str, float]


async def measured(layer: str, placement: str, round_: int, send: Send, concurrency: int, duration_s: float,
                   roles: Mapping[int, str], gateway_metrics: Callable[[], str] | None = None) -> ServingRun:
    """A closed-loop run of `send`, after a warm-up, with the CPU each role spent during it and, given
    `gateway_metrics` (which fetches the gateway's metrics text), the gateway's stage means during it."""
    await warm_up(send, concurrency, WARMUP_ROUNDS)
    stages_before = stage_seconds(gateway_metrics()) if gateway_metrics else {}
    load, cpu = await measured_with_cpu(send, concurrency, duration_s, roles)
    stage_ms = stage_means_ms(stages_before, stage_seconds(gateway_metrics())) if gateway_metrics else {}
    return ServingRun(layer, placement, round_, load, cpu, stage_ms)


async def measured_with_cpu(send: Send, concurrency: int, duration_s: float, roles: Mapping[int, str]
                            ) -> tuple[LoadResult, dict[str, float]]:
    """A closed-loop run of `send` and the CPU milliseconds each role spent per request during it."""
    before = cpu_seconds_by_role(roles)
    load = await measure(send, concurrency, duration_s)
    after = cpu_seconds_by_role(roles)
    return load, {role: (after[role] - before.get(role, 0.0)) * 1000 / max(load.requests, 1) for role in after}


@dataclass(frozen=True)
class LayerSummary:
    """Medians over rounds of one layer at one concurrency."""

    layer: str
    concurrency: int
    throughput_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests: int
    errors: int
    first_error: str
    cpu_ms_per_request: dict[str, float]
    stage_ms: dict[str, float]


def _medians(values: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per key, the median of the values that have it."""
    keys = dict.fromkeys(key for mapping in values for key in mapping)
    return {key: statistics.median(mapping[key] for mapping in values if key in mapping) for key in keys}


def summarize_layer(runs: Sequence[ServingRun]) -> LayerSummary:
    roles = sorted({role for run in runs for role in run.cpu_ms_per_request})
    return LayerSummary(
        runs[0].layer, runs[0].load.concurrency,
        statistics.median(run.load.throughput_per_s for run in runs),
        statistics.median(run.load.latency.p50_ms for run in runs),
        statistics.median(run.load.latency.p95_ms for run in runs),
        statistics.median(run.load.latency.p99_ms for run in runs),
        sum(run.load.requests for run in runs),
        sum(run.load.errors for run in runs),
        next((run.load.first_error for run in runs if run.load.errors), ""),
        {role: statistics.median(run.cpu_ms_per_request.get(role, 0.0) for run in runs) for role in roles},
        _medians([run.stage_ms for run in runs]))


@dataclass(frozen=True)
class Comparison:
    """Gateway against Triton alone at one concurrency and core placement, from runs that alternated round by
    round; at low load also the p50 of a bare call to the gateway (its health check), the floor under the
    latency it adds."""

    placement: str
    concurrency: int
    triton: LayerSummary
    gateway: LayerSummary
    throughput_ratio: float
    added_p50_ms: float
    ratio_by_round: list[float]
    round_trip_p50_ms: float | None


def compare(runs: Sequence[ServingRun], placement: str, concurrency: int) -> Comparison:
    """Ratios are taken within each round (same machine state), then the median over rounds."""
    at = [run for run in runs if run.load.concurrency == concurrency and run.placement == placement]
    triton, gateway, round_trips = (sorted((run for run in at if run.layer == layer), key=lambda run: run.round)
                                    for layer in (TRITON, GATEWAY, ROUND_TRIP))
    ratios = [g.load.throughput_per_s / t.load.throughput_per_s for t, g in zip(triton, gateway)]
    added = [g.load.latency.p50_ms - t.load.latency.p50_ms for t, g in zip(triton, gateway)]
    round_trip = statistics.median(run.load.latency.p50_ms for run in round_trips) if round_trips else None
    return Comparison(placement, concurrency, summarize_layer(triton), summarize_layer(gateway),
                      statistics.median(ratios), statistics.median(added), ratios, round_trip)
