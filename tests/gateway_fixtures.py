"""A gateway serving gRPC and its Prometheus endpoint on free loopback ports, over real backends.

Used by the load, Prometheus and deployment tests: ``async with served_gateway(...) as served`` indexes
the first ``catalog_size`` Fashion-MNIST training images, serves until the block ends, then stops.
"""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from gateway.catalog import EdgeCatalog
from gateway.catalog.aliases import EdgeAliases
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.server import Gateway, open_pipeline, start_gateway
from stack.redis import RedisServer
from stack.run import index_demo_catalog
from stack.triton import TritonServer

# For tests that check wiring rather than latency: a 2-core machine busy with Triton may take seconds
# to embed one image, which the production timeouts (3 s to embed, 5 s a request) would turn into errors.
PATIENT_TIMEOUTS = {"embed_timeout_s": 20.0, "request_timeout_s": 30.0}


@dataclass(frozen=True)
class ServedGateway:
    gateway: Gateway
    metrics: Metrics
    metrics_port: int

    @property
    def target(self) -> str:
        """The gRPC address, host:port."""
        return f"127.0.0.1:{self.gateway.port}"

    @property
    def metrics_target(self) -> str:
        """The metrics endpoint's host:port, as a Prometheus scrape target."""
        return f"127.0.0.1:{self.metrics_port}"


@contextlib.asynccontextmanager
async def served_gateway(triton: TritonServer, redis: RedisServer, data_dir: Path, catalog_size: int = 0,
                         **settings: float) -> AsyncIterator[ServedGateway]:
    """A served gateway over ``redis`` (running or not: a stopped server's URL stands for Redis down);
    ``settings`` override Settings fields, e.g. PATIENT_TIMEOUTS."""
    config = Settings(triton_url=triton.grpc_url, redis_url=redis.url, data_dir=data_dir, **settings)
    metrics = Metrics(CollectorRegistry())
    metrics_server, _ = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        async with open_pipeline(config, metrics) as (pipeline, indexer):
            if catalog_size:
                await index_demo_catalog(indexer, catalog_size, batch_size=16)
            gateway = await start_gateway(pipeline, indexer, config, metrics, address="127.0.0.1:0")
            try:
                yield ServedGateway(gateway, metrics, metrics_server.server_port)
            finally:
                await gateway.stop(grace_s=1)
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()


async def catalog_behind_alias(qdrant_dir: Path, alias: str = "products") -> EdgeCatalog:
    """The embedded catalog collection that `alias` points at, as `make index` left it (not opened yet)."""
    collection = await EdgeAliases(qdrant_dir).target(alias)
    assert collection is not None, f"no catalog alias '{alias}' under {qdrant_dir}"
    return EdgeCatalog(qdrant_dir, collection)
