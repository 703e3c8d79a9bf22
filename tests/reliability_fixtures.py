"""A gateway over real backends for the reliability and security suites.

It embeds with the tiny test model (tests/triton_fixtures.py) unless told otherwise, indexes the
first Fashion-MNIST training images, and listens on a free loopback port. Import what a module needs:
`running_gateway` to start one, `wait_for_health` to poll its health.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.server import Gateway, open_pipeline, start_gateway
from stack.run import index_demo_catalog
from tests.triton_fixtures import TINY_MODEL

CATALOG_SIZE = 64
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Running:
    """A started gateway, its metrics and settings."""

    gateway: Gateway
    metrics: Metrics
    settings: Settings

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A metric's current value (0 when it has not been recorded)."""
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def tiny_settings(triton_url: str, redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a gateway over the tiny test model."""
    return Settings(triton_url=triton_url, redis_url=redis_url, data_dir=data_dir, model_name=TINY_MODEL,
                    **overrides)


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, catalog_size: int = CATALOG_SIZE) -> AsyncIterator[Running]:
    """A gateway on 127.0.0.1 with the first `catalog_size` Fashion-MNIST training images indexed."""
    metrics = Metrics(CollectorRegistry())
    async with open_pipeline(settings, metrics) as (pipeline, indexer):
        if catalog_size:
            await index_demo_catalog(indexer, catalog_size, settings.ingest_batch_size)
        gateway = await start_gateway(pipeline, indexer, settings, metrics, address="127.0.0.1:0")
        try:
            yield Running(gateway, metrics, settings)
        finally:
            await gateway.stop(grace_s=0)


async def wait_for_health(channel: grpc.aio.Channel, status: int, timeout_s: float = 20.0) -> float:
    """Polls the overall health until it is `status`; returns the seconds it took."""
    stub = health_pb2_grpc.HealthStub(channel)
    start = time.monotonic()
    while True:
        try:
            current = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)).status
        except grpc.aio.AioRpcError:
            current = None
        if current == status:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"health was {current}, not {status}, after {timeout_s} s")
        await asyncio.sleep(0.05)

