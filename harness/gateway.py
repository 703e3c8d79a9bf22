"""A gateway to test or measure: in this process over real backends, or as a process of its own.

`in_process` builds the gateway from Settings through the composition root, as `python -m gateway` does, and
serves it on a free loopback port; `over` serves an existing pipeline and indexer (a second gateway over the same
backends, e.g. with other ranker weights or a broken history store); `spawned` starts a command that serves gRPC
(`python -m gateway`, `python -m stack.run`), waits until it is SERVING and stops it with SIGTERM.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, start_http_server

from gateway.catalog import CatalogStore
from gateway.composition import Components
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.server import Gateway, start_gateway
from gateway.serving import Serving
from harness.health import SERVING, wait_for_health
from ops.index import index_fashion_mnist

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RunningGateway:
    """A started gateway with its metrics (and, when asked for, their HTTP endpoint) and settings."""

    gateway: Gateway
    metrics: Metrics
    settings: Settings
    metrics_port: int | None = None

    @property
    def target(self) -> str:
        """The gRPC address, host:port."""
        return f"{LOOPBACK}:{self.gateway.port}"

    @property
    def metrics_target(self) -> str:
        """The metrics endpoint's host:port, as a Prometheus scrape target."""
        return f"{LOOPBACK}:{self.metrics_port}"

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A metric's current value (0 when it has not been recorded)."""
        return self.metrics.registry.get_sample_value(name, dict(labels or {})) or 0.0


@contextlib.asynccontextmanager
async def over(serving: Serving, settings: Settings, metrics: Metrics, grace_s: float = 0.0,
               metrics_port: int | None = None) -> AsyncIterator[RunningGateway]:
    """A gateway serving `serving` on a free loopback port until the block exits."""
    gateway = await start_gateway(serving, settings, metrics, address=f"{LOOPBACK}:0")
    try:
        yield RunningGateway(gateway, metrics, settings, metrics_port)
    finally:
        await gateway.stop(grace_s)


@contextlib.asynccontextmanager
async def in_process(settings: Settings, catalog_size: int = 0, metrics_endpoint: bool = False,
                     grace_s: float = 0.0) -> AsyncIterator[RunningGateway]:
    """The gateway of `settings` on a free loopback port, with the first `catalog_size` Fashion-MNIST training
    images indexed first, and with `metrics_endpoint` its metrics served over HTTP on another free port."""
    metrics = Metrics(CollectorRegistry())
    async with contextlib.AsyncExitStack() as stack:
        metrics_port = None
        if metrics_endpoint:
            metrics_server, _ = start_http_server(0, addr=LOOPBACK, registry=metrics.registry)
            stack.callback(metrics_server.server_close)
            stack.callback(metrics_server.shutdown)
            metrics_port = metrics_server.server_port
        serving = await stack.enter_async_context(Components(settings).serving(metrics))
        if catalog_size:
            await index_fashion_mnist(serving.indexer, catalog_size, settings.ingest_batch_size)
        yield await stack.enter_async_context(over(serving, settings, metrics, grace_s, metrics_port))


@contextlib.asynccontextmanager
async def spawned(command: Sequence[str], target: str, env: Mapping[str, str], log_path: Path | None = None,
                  timeout_s: float = 900.0, cwd: Path | None = None) -> AsyncIterator["subprocess.Popen[bytes]"]:
    """`command` in its own process and session with `env` (in `cwd`, default this process's), its output in
    `log_path` (default: this process's);
    yields the process once the gRPC health at `target` is SERVING, and stops it with SIGTERM (SIGKILL after a
    minute) at the end."""
    with contextlib.ExitStack() as files:
        log = files.enter_context(log_path.open("wb")) if log_path else None
        process = subprocess.Popen(list(command), env=dict(env), stdout=log, stderr=subprocess.STDOUT if log else None,
                                   start_new_session=True, cwd=cwd)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            try:
                await wait_for_health(channel, SERVING, timeout_s, process)
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(f"{' '.join(command)}: {error}" + (f"; see {log_path}" if log_path else "")
                                   ) from None
        yield process
    finally:
        await asyncio.to_thread(stop, process)


async def served_catalog(settings: Settings) -> CatalogStore:
    """The store of the collection the catalog alias points at, as `make index` or a gateway left it; not opened
    (call `open(model)`), and the caller closes it."""
    components = Components(settings)
    aliases = components.catalog_aliases()
    try:
        collection = await aliases.target(settings.collection)
    finally:
        await aliases.close()
    if collection is None:
        raise LookupError(f"no catalog alias '{settings.collection}' under {settings.data_dir}")
    return components.catalog_store(collection)


def stop(process: "subprocess.Popen[bytes]", timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL to the process's whole session if it has not exited within `timeout_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode
