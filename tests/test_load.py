"""The load profiles: a short k6 smoke run against a real gateway, and the ghz configurations' requests."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import json_format, message_factory

from gateway.config import Settings
from harness.gateway import RunningGateway, in_process
from recsys_api.v1 import recsys_pb2 as pb
from tests.triton_fixtures import PATIENT_TIMEOUTS

ROOT = Path(__file__).resolve().parent.parent
LOAD = ROOT / "deploy" / "load"
K6_SCRIPT = LOAD / "k6" / "recommend.js"
K6 = Path(sys.executable).parent / "k6"
CATALOG_SIZE = 64  # the request files use products among the first 64 training images
MIXES = ("image", "product", "history")
# Every key ghz reads from a JSON configuration (its runner's Config).
GHZ_KEYS = {
    "proto", "protoset", "call", "import-paths", "host", "insecure", "cacert", "cert", "key", "cname", "skipTLS",
    "authority", "data", "data-file", "binary-file", "metadata", "metadata-file", "total", "concurrency",
    "connections", "rps", "duration", "max-duration", "timeout", "connect-timeout", "keepalive", "name", "tags",
    "format", "output", "load-schedule", "load-start", "load-end", "load-step", "load-step-duration",
    "load-max-duration", "concurrency-schedule", "concurrency-start", "concurrency-end", "concurrency-step",
    "concurrency-step-duration", "concurrency-max-duration", "skipFirst", "async", "cpus", "count-errors",
}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def served(triton_server, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis_server.url,
                        data_dir=tmp_path_factory.mktemp("data"), **PATIENT_TIMEOUTS)
    async with in_process(settings, CATALOG_SIZE, metrics_endpoint=True, grace_s=1) as served:
        yield served


async def k6(target: str, summary: Path, timeout_s: float = 120, **env: str) -> tuple[int, str]:
    """Runs the k6 script (without blocking the event loop that serves the gateway); exit code and output."""
    options = [f"--env={name}={value}" for name, value in {"TARGET": target, **env}.items()]
    process = await asyncio.create_subprocess_exec(
        str(K6), "run", "--quiet", "--no-color", f"--summary-export={summary}", *options, str(K6_SCRIPT),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


async def test_k6_smoke_profile_passes_its_thresholds_for_every_mix(served, tmp_path):
    # Latency limits at the patient request timeout: this checks the wiring, not the SLO.
    code, output = await k6(served.target, tmp_path / "summary.json", PROFILE="smoke", DURATION="6s",
                            TIMEOUT="30s", P95_MS="30000", P99_MS="30000")
    assert code == 0, output
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    for mix in MIXES:
        assert metrics[f"grpc_req_duration{{scenario:{mix}}}"]["thresholds"] == {
            "p(95)<30000": False, "p(99)<30000": False}, mix  # False: not crossed
        failed = metrics[f"recsys_failed_requests{{scenario:{mix}}}"]
        assert failed["value"] == 0 and failed["fails"] >= 1, mix  # a Rate's "fails" counts false samples
    assert metrics["checks"]["fails"] == 0
    print(f"k6 smoke: {metrics['iterations']['count']} requests; p95 by mix (ms): "
          + ", ".join(f"{mix} {metrics[f'grpc_req_duration{{scenario:{mix}}}']['p(95)']:.0f}" for mix in MIXES))


async def test_k6_fails_the_run_when_the_service_misses_a_threshold(served, tmp_path):
    code, output = await k6(served.target, tmp_path / "summary.json", PROFILE="smoke", DURATION="2s",
                            P99_MS="0.001", MIX_PRODUCT="0", MIX_HISTORY="0")
    assert code == 99, output  # k6's exit code for crossed thresholds
    assert "p(99)<0.001" in output


def test_k6_refuses_an_unknown_profile():
    result = subprocess.run([str(K6), "inspect", "--env=PROFILE=soak", str(K6_SCRIPT)], check=False,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "unknown PROFILE soak" in result.stdout + result.stderr


@pytest.mark.parametrize("config_path", sorted((LOAD / "ghz").glob("*.json")), ids=lambda path: path.name)
def test_ghz_configurations_send_valid_requests_to_existing_rpcs(config_path: Path):
    config = json.loads(config_path.read_text())
    assert set(config) <= GHZ_KEYS, set(config) - GHZ_KEYS
    assert (ROOT / config["proto"]).exists() and config["insecure"]
    service_name, method_name = config["call"].rsplit(".", 1)
    method = pb.DESCRIPTOR.services_by_name[service_name.removeprefix("recsys.v1.")].methods_by_name[method_name]
    requests = json.loads((ROOT / config["data-file"]).read_text())
    assert requests
    for request in requests:
        message = json_format.ParseDict(request, message_factory.GetMessageClass(method.input_type)())
        assert message.ByteSize() > 0


def test_request_files_are_the_generated_ones(tmp_path):
    subprocess.run([sys.executable, str(LOAD / "make_data.py"), "--out", str(tmp_path)], check=True, timeout=120,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    committed = sorted(path.name for path in (LOAD / "data").glob("*.json"))
    assert committed == sorted(path.name for path in tmp_path.glob("*.json"))
    for name in committed:
        assert (tmp_path / name).read_text() == (LOAD / "data" / name).read_text(), name
