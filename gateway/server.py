"""Assembles the gateway: adapters, pipeline, gRPC server with health and reflection, metrics endpoint."""

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from .admission import Admission
from .api.recsys.v1 import recsys_pb2 as pb
from .api.recsys.v1 import recsys_pb2_grpc as pb_grpc
from .auth import authenticator_for
from .catalog import open_catalog_aliases, open_catalog_store
from .catalog.aliases import versioned_collection
from .catalog.refused import RefusedCatalog
from .config import Settings
from .domain import FailedPrecondition
from .embedder import TritonEmbedder
from .errors import ErrorMappingInterceptor
from .history import RedisHistory
from .indexer import Indexer
from .metrics import Metrics
from .pipeline import Pipeline
from .servicer import CatalogServicer, RecommenderServicer
from .serving import Serving, follow_alias, serving_target
from .tls import server_credentials

log = logging.getLogger(__name__)
SERVICES = tuple(pb.DESCRIPTOR.services_by_name[name].full_name for name in ("Recommender", "Catalog"))
# SERVING for as long as the server answers: a liveness probe, unlike readiness, ignores the backends.
LIVENESS_SERVICE = "liveness"
HEALTH_POLL_S = 2.0
SHUTDOWN_GRACE_S = 10.0


@dataclass
class Gateway:
    """A running gRPC server and what it serves; `stop()` flips health, drains and closes."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    serving: Serving
    _monitor: asyncio.Task[None]

    @property
    def pipeline(self) -> Pipeline:
        return self.serving.pipeline

    @property
    def indexer(self) -> Indexer:
        return self.serving.indexer

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        await self.health.enter_graceful_shutdown()
        self._monitor.cancel()
        await self.server.stop(grace_s)


@contextlib.asynccontextmanager
async def open_pipeline(settings: Settings, metrics: Metrics, recreate_catalog: bool = False
                        ) -> AsyncIterator[tuple[Pipeline, Indexer]]:
    """Connects to Triton, the catalog and the history store, and closes them on exit.

    The catalog is the collection the alias ``settings.collection`` points at, embedded with the model
    version that collection records (``gateway.serving.serving_target``); a new catalog is created as
    ``<name>-v<version>`` with the alias pointing at it. With recreate_catalog that collection is dropped
    first and built anew with the served model.
    """
    if not settings.triton_url or not settings.redis_url:
        raise ValueError("TRITON_URL and REDIS_URL are required here (`make run` starts local servers)")
    aliases = open_catalog_aliases(settings.qdrant_url, settings.data_dir, settings.search_timeout_s)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(aliases.close)
        collection, version = await serving_target(aliases, settings, recreate_catalog)
        embedder = await TritonEmbedder.connect(settings.triton_url, settings.model_name, version,
                                                max_message_bytes=settings.max_message_bytes)
        stack.push_async_callback(embedder.close)
        decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        stack.callback(decode_pool.shutdown)
        new_collection = collection is None
        collection = collection or versioned_collection(settings.collection, embedder.info.version)
        catalog = open_catalog_store(settings.qdrant_url, settings.data_dir, collection,
                                     timeout_s=settings.search_timeout_s)
        stack.push_async_callback(catalog.close)
        if recreate_catalog:
            await catalog.drop()
        try:
            await catalog.open(embedder.info)
            if new_collection:
                await aliases.point(settings.collection, collection)
        except FailedPrecondition as refusal:
            log.error("the catalog cannot be served: %s", refusal)
            catalog = RefusedCatalog(catalog, refusal)
        history = RedisHistory.from_url(settings.redis_url, max_views=settings.history_max_views,
                                        ttl_s=settings.history_ttl_s, timeout_s=settings.history_timeout_s)
        stack.push_async_callback(history.close)
        pipeline = Pipeline(embedder, catalog, history, settings, metrics, decode_pool)
        indexer = Indexer(embedder, catalog, decode_pool, settings.image_limits, metrics)
        yield pipeline, indexer


async def start_gateway(pipeline: Pipeline, indexer: Indexer, settings: Settings, metrics: Metrics,
                        address: str | None = None) -> Gateway:
    """Starts the gRPC server on address (default: settings.grpc_address; port 0 picks a free one).

    With TLS_CERT_FILE/TLS_KEY_FILE the port speaks TLS (mutual with TLS_CLIENT_CA_FILE); with
    AUTH_TOKENS(_FILE) our services want a bearer token.
    """
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.max_send_message_length", settings.max_message_bytes)]
    authenticator = authenticator_for(settings)
    if authenticator is None:
        log.warning("authentication is off: set AUTH_TOKENS_FILE or AUTH_TOKENS to require bearer tokens")
    admission = Admission("requests", settings.max_concurrent_requests, metrics.in_flight)
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor(metrics, SERVICES, admission, authenticator)],
                             options=options)
    serving = Serving(pipeline, indexer)
    pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(serving), server)
    pb_grpc.add_CatalogServicer_to_server(CatalogServicer(serving, settings.ingest_batch_size), server)
    health_servicer = health.aio.HealthServicer()
    for service in ("", *SERVICES):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    credentials = server_credentials(settings)
    address = address or settings.grpc_address
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    monitor = asyncio.create_task(_watch_health(serving, health_servicer))
    log.info("gateway listening on port %d, serving model %s", port, pipeline.embedder.info)
    return Gateway(server, port, health_servicer, serving, monitor)


async def _watch_health(serving: Serving, health_servicer: health.aio.HealthServicer) -> None:
    """Keeps the health status in step with the backends: SERVING while image queries can be served
    (Triton and the catalog answer; see Pipeline.ready), NOT_SERVING otherwise."""
    previous = None
    while True:
        try:
            ready = await serving.pipeline.ready()
        except Exception:
            log.exception("health check failed")
            ready = False
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != previous:
            log.log(logging.INFO if ready else logging.WARNING, "health: %s",
                    health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            previous = status
        for service in ("", *SERVICES):
            await health_servicer.set(service, status)
        await asyncio.sleep(HEALTH_POLL_S)


async def serve(settings: Settings) -> None:
    """Runs the gateway until SIGINT/SIGTERM, then flips health to NOT_SERVING and drains."""
    metrics = Metrics(CollectorRegistry())
    metrics_server, _ = start_http_server(settings.metrics_port, registry=metrics.registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with open_pipeline(settings, metrics) as (pipeline, indexer):
            gateway = await start_gateway(pipeline, indexer, settings, metrics)
            async with follow_alias(gateway.serving, settings):
                await stop.wait()
                log.info("shutting down: health NOT_SERVING, draining for up to %.0f s", SHUTDOWN_GRACE_S)
                await gateway.stop()
    finally:
        metrics_server.shutdown()
