"""Several gateway processes on one port (GATEWAY_WORKERS > 1), the way gRPC Python uses several cores.

A grpc.aio server runs its Python on one core, so a pod serves from more cores by running more processes. The
supervisor (`run_workers`) starts GATEWAY_WORKERS worker processes, each a whole gateway (`gateway.server.serve`)
with its own event loop and backend clients, binding GRPC_ADDRESS (and HEALTH_PORT) with SO_REUSEPORT: the kernel
spreads new connections among them. Their metrics go to prometheus_client's multiprocess directory, and the
supervisor serves them on METRICS_PORT merged: counters and histograms summed, gauges as their
`multiprocess_mode` says.

SIGTERM or SIGINT to the supervisor reaches every worker, which drains as a single gateway does. When a worker
exits on its own, the supervisor stops the others and exits with status 1, so that the orchestrator restarts the
whole pod. Workers need a catalog that several processes can open, a Qdrant server (QDRANT_URL): the embedded
engine locks its shard to one process (Settings refuses GATEWAY_WORKERS > 1 without QDRANT_URL).
"""

import asyncio
import logging
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .config import Settings

log = logging.getLogger(__name__)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
# A worker drains for up to SHUTDOWN_GRACE_S (10 s) after SIGTERM; past this it is killed.
STOP_TIMEOUT_S = 30.0


def merged_registry(directory: str) -> CollectorRegistry:
    """A registry that reads every worker's metrics from prometheus_client's multiprocess `directory`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def run_workers(settings: Settings) -> int:
    """Runs GATEWAY_WORKERS workers until a signal stops them (status 0) or one exits on its own (status 1)."""
    with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR] = directory  # before the workers start and import prometheus_client
        metrics_server, _ = start_http_server(settings.metrics_port, registry=merged_registry(directory))
        spawn = multiprocessing.get_context("spawn")
        workers = [spawn.Process(target=_serve_worker, name=f"worker-{index}")
                   for index in range(settings.gateway_workers)]
        stopping = failed = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True
            _signal_all(workers)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        try:
            for worker in workers:
                worker.start()
            log.info("gateway: %d workers on %s (pids %s), metrics on port %d", len(workers), settings.grpc_address,
                     ", ".join(str(worker.pid) for worker in workers), settings.metrics_port)
            [ended] = wait([worker.sentinel for worker in workers])[:1]
            failed = not stopping
            if failed:
                gone = next(worker for worker in workers if worker.sentinel == ended)
                gone.join()
                log.error("gateway %s (pid %s) exited with status %s; stopping the other workers", gone.name,
                          gone.pid, gone.exitcode)
            _stop_all(workers)
        finally:
            for worker in workers:
                if worker.pid is not None:
                    mark_process_dead(worker.pid, directory)
            metrics_server.shutdown()
    return 1 if failed or any(worker.exitcode for worker in workers) else 0


def _signal_all(workers: Sequence[BaseProcess]) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()  # SIGTERM: the worker drains


def _stop_all(workers: Sequence[BaseProcess]) -> None:
    """SIGTERM to every worker still running, SIGKILL to any still running STOP_TIMEOUT_S later."""
    _signal_all(workers)
    for worker in workers:
        worker.join(STOP_TIMEOUT_S)
        if worker.is_alive():
            log.error("gateway %s (pid %s) did not stop; killing it", worker.name, worker.pid)
            worker.kill()
            worker.join()


def _serve_worker() -> None:
    """One worker: a whole gateway on the shared ports, from the same environment as its supervisor."""
    from .server import serve

    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level_number, format=WORKER_LOG_FORMAT)
    asyncio.run(serve(settings))
