"""Several gateway processes on one port (GATEWAY_WORKERS): when they are refused, how the supervisor stops, and how
their metrics merge."""

import asyncio
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client.multiprocess import mark_process_dead

from gateway.catalog.edge import EdgeCatalog
from gateway.config import Settings, SettingsError
from gateway.domain import ModelInfo
from gateway.workers import merged_registry
from stack.net import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = ModelInfo(name="product_embedder", version="1", backbone="efficientnet_lite0", dim=8)


@pytest.mark.parametrize(("environment", "expected"), [
    ({"GATEWAY_WORKERS": "2"}, "GATEWAY_WORKERS=2 needs QDRANT_URL"),
    ({"GATEWAY_WORKERS": "2", "QDRANT_URL": "http://qdrant:6333", "GRPC_ADDRESS": "[::]:0"},
     "needs a fixed port in GRPC_ADDRESS"),
    ({"GATEWAY_WORKERS": "2", "QDRANT_URL": "http://qdrant:6333", "HEALTH_PORT": "0"},
     "needs a fixed port in HEALTH_PORT"),
    ({"GATEWAY_WORKERS": "0"}, "GATEWAY_WORKERS='0': Input should be greater than or equal to 1"),
])
def test_workers_are_refused_without_a_catalog_they_can_share_or_a_port_they_can_share(
        monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: str):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=re.escape(expected)):
        Settings.from_env()


def test_several_workers_with_a_qdrant_server_are_accepted(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GATEWAY_WORKERS", "4")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    assert Settings.from_env().gateway_workers == 4


async def test_the_embedded_engine_refuses_a_second_process(tmp_path: Path):
    """Why workers need QDRANT_URL: the engine locks the shard it opened."""
    catalog = EdgeCatalog(tmp_path, "products")
    await catalog.open(MODEL)
    try:
        second = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", textwrap.dedent(f"""
            import asyncio
            from pathlib import Path
            from gateway.catalog.edge import EdgeCatalog
            from gateway.domain import ModelInfo
            asyncio.run(EdgeCatalog(Path({str(tmp_path)!r}), "products").open(ModelInfo(**{MODEL.__dict__!r})))
            """)], check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
            timeout=120)
    finally:
        await catalog.close()
    assert second.returncode != 0
    assert "only one process at a time can open it" in second.stderr


def test_a_worker_that_exits_stops_the_others_and_the_supervisor_fails(tmp_path: Path):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_WORKERS": "2",
                   "QDRANT_URL": f"http://127.0.0.1:{free_port()}", "TRITON_URL": f"127.0.0.1:{free_port()}",
                   "REDIS_URL": f"redis://127.0.0.1:{free_port()}", "GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
                   "METRICS_PORT": str(free_port())}
    supervisor = subprocess.run([sys.executable, "-m", "gateway"], check=False, cwd=tmp_path, env=environment,
                                capture_output=True, text=True, timeout=180)
    assert supervisor.returncode == 1, supervisor.stderr[-3000:]
    assert re.search(r"gateway worker-\d \(pid \d+\) exited with status 1; stopping the other workers",
                     supervisor.stderr)
    started = re.search(r"2 workers on \S+ \(pids (\d+), (\d+)\)", supervisor.stderr)
    assert started, supervisor.stderr[-3000:]
    for pid in started.groups():
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived its supervisor"


WORKER_METRICS = """
import sys
from prometheus_client import CollectorRegistry
from gateway.metrics import Metrics
metrics = Metrics(CollectorRegistry())
lists = int(sys.argv[1])
for _ in range(lists):
    metrics.recommendations.labels("none").inc()
    metrics.stage_seconds.labels("search").observe(0.002)
metrics.in_flight.labels("requests").set(lists)
metrics.record_dependencies(embedder=True, catalog=lists < 3, history=True)
metrics.catalog_products.set(100 * lists)
print(__import__("os").getpid())
"""


def test_the_supervisor_exports_the_workers_metrics_merged(tmp_path: Path):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pids = [int(subprocess.run([sys.executable, "-c", WORKER_METRICS, str(lists)], env=environment, check=True,
                               capture_output=True, text=True, timeout=120).stdout)
            for lists in (2, 3)]
    registry = merged_registry(str(tmp_path))
    assert registry.get_sample_value("recsys_recommendations_total", {"experiment": "none"}) == 5
    assert registry.get_sample_value("recsys_stage_duration_seconds_count", {"stage": "search"}) == 5
    assert registry.get_sample_value("recsys_in_flight", {"work": "requests"}) == 5, "the pod's total"
    assert registry.get_sample_value("recsys_dependency_up", {"dependency": "catalog"}) == 0, "down in one worker"
    assert registry.get_sample_value("recsys_dependency_up", {"dependency": "embedder"}) == 1
    assert registry.get_sample_value("recsys_catalog_products") == 300, "the latest count read"
    mark_process_dead(pids[1], str(tmp_path))
    registry = merged_registry(str(tmp_path))
    assert registry.get_sample_value("recsys_in_flight", {"work": "requests"}) == 2, "a dead worker's gauges go"
    assert registry.get_sample_value("recsys_dependency_up", {"dependency": "catalog"}) == 1
    assert registry.get_sample_value("recsys_recommendations_total", {"experiment": "none"}) == 5, "counts stay"
