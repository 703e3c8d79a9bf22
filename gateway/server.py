"""The gRPC server: our services behind the interceptor, health checking and reflection, the metrics endpoint."""

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc

from .admission import Admission
from .auth import authenticator_for
from .composition import Components
from .config import Settings
from .errors import ErrorMappingInterceptor
from .indexer import Indexer
from .metrics import Metrics
from .pipeline import Pipeline
from .servicer import CatalogServicer, RecommenderServicer
from .serving import Serving, follow_alias
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
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None

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
        if self.health_server:  # answered NOT_SERVING to the probes while the requests drained
            await self.health_server.stop(0)


async def start_gateway(serving: Serving, settings: Settings, metrics: Metrics, address: str | None = None
                        ) -> Gateway:
    """Starts the gRPC server over `serving` on address (default: settings.grpc_address; port 0 picks a free one).

    With TLS_CERT_FILE/TLS_KEY_FILE the port speaks TLS (mutual with TLS_CLIENT_CA_FILE); with
    AUTH_TOKENS(_FILE) our services want a bearer token. With HEALTH_PORT, a second, plaintext port on the same
    host serves the health service alone (nothing else), for probes that cannot speak TLS (Kubernetes' gRPC probes,
    a container's HEALTHCHECK).
    """
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.max_send_message_length", settings.max_message_bytes), *_shared_port(settings)]
    authenticator = authenticator_for(settings)
    if authenticator is None:
        log.warning("authentication is off: set AUTH_TOKENS_FILE or AUTH_TOKENS to require bearer tokens")
    admission = Admission("requests", settings.max_concurrent_requests, metrics.in_flight)
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor(metrics, SERVICES, admission, authenticator)],
                             options=options)
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
    health_server, health_port = await _start_health_server(health_servicer, address, settings)
    monitor = asyncio.create_task(_watch_health(serving, health_servicer))
    log.info("gateway listening on port %d (%s), health also on plaintext port %s, serving model %s", port,
             "TLS" if credentials else "plaintext", health_port or "-", serving.pipeline.embedder.info)
    return Gateway(server, port, health_servicer, serving, monitor, health_server, health_port)


def _shared_port(settings: Settings) -> list[tuple[str, int]]:
    """The server option that lets the worker processes (GATEWAY_WORKERS > 1) bind one port, the kernel spreading
    new connections among them; none for a single process."""
    return [("grpc.so_reuseport", 1)] if settings.gateway_workers > 1 else []


async def _start_health_server(servicer: health.aio.HealthServicer, address: str, settings: Settings
                               ) -> tuple[grpc.aio.Server | None, int | None]:
    """A plaintext server of the health service only, on HEALTH_PORT of the gRPC address's host (0: a free one)."""
    if settings.health_port is None:
        return None, None
    server = grpc.aio.server(options=_shared_port(settings))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{address.rpartition(':')[0]}:{settings.health_port}")
    await server.start()
    return server, bound


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
    """Serves until SIGINT/SIGTERM, then flips health to NOT_SERVING and drains: gRPC on GRPC_ADDRESS, metrics on
    METRICS_PORT, the catalog behind its alias, followed through rollouts. As one of several workers
    (GATEWAY_WORKERS > 1, `gateway.workers`) it shares the gRPC and health ports, and its supervisor serves the
    metrics."""
    components = Components(settings)
    components.check_servers()
    metrics = Metrics(CollectorRegistry())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if settings.gateway_workers == 1:
            metrics_server, _ = start_http_server(settings.metrics_port, registry=metrics.registry)
            stack.callback(metrics_server.shutdown)
        serving = await stack.enter_async_context(components.serving(metrics))
        gateway = await start_gateway(serving, settings, metrics)
        async with follow_alias(gateway.serving, components):
            await stop.wait()
            log.info("shutting down: health NOT_SERVING, draining for up to %.0f s", SHUTDOWN_GRACE_S)
            await gateway.stop()
