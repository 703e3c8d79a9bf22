"""The load profiles: short k6 smoke runs against a real gateway, plaintext and, through `make load`, with TLS and
bearer tokens; the request files. tests/test_load_ghz.py checks the ghz configurations."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from gateway.config import Settings
from harness.gateway import RunningGateway, in_process
from tests.triton_fixtures import PATIENT_TIMEOUTS, tiny_settings

ROOT = Path(__file__).resolve().parent.parent
LOAD = ROOT / "deploy" / "load"
K6_SCRIPT = LOAD / "k6" / "recommend.js"
K6 = Path(sys.executable).parent / "k6"
CATALOG_SIZE = 64  # the request files use products among the first 64 training images
MIXES = ("image", "product", "history")
VIEWS = len(json.loads((LOAD / "data" / "record-views.json").read_text()))
READER = "load-reader-token-0123456789"
# Latency limits at the patient request timeout: these runs check the wiring, not the SLO.
PATIENT_LIMITS = {"TIMEOUT": "30s", "P95_MS": "30000", "P99_MS": "30000"}
MAKE_TLS_FILES = {"CACERT": "ca", "CERT": "client", "KEY": "client_key"}  # make load's variables: tls_files' keys
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def served(triton_server, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis_server.url,
                        data_dir=tmp_path_factory.mktemp("data"), **PATIENT_TIMEOUTS)
    async with in_process(settings, CATALOG_SIZE, metrics_endpoint=True, grace_s=1) as served:
        yield served


async def run(command: list[str], **env: str) -> tuple[int, str]:
    """Runs `command` from the repository root with `env` added to the environment, without blocking the event
    loop that serves the gateway, for two minutes at most; its exit code and output."""
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env={**os.environ, **env},
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 120)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


async def k6(target: str, summary: Path, **env: str) -> tuple[int, str]:
    """The k6 script run directly, its settings given with --env."""
    options = [f"--env={name}={value}" for name, value in {"TARGET": target, **env}.items()]
    return await run([str(K6), "run", "--quiet", "--no-color", f"--summary-export={summary}", *options,
                      str(K6_SCRIPT)])


def passed_every_threshold(summary: Path) -> dict:
    """The summary's metrics, once checked: every mix ran, within the patient limits, with no failed request."""
    metrics = json.loads(summary.read_text())["metrics"]
    for mix in MIXES:
        assert metrics[f"grpc_req_duration{{scenario:{mix}}}"]["thresholds"] == {
            "p(95)<30000": False, "p(99)<30000": False}, mix  # False: not crossed
        failed = metrics[f"recsys_failed_requests{{scenario:{mix}}}"]
        assert failed["value"] == 0 and failed["fails"] >= 1, mix  # a Rate's "fails" counts false samples
    assert metrics["checks"]["fails"] == 0
    return metrics


async def test_k6_smoke_profile_passes_its_thresholds_for_every_mix(served, tmp_path):
    code, output = await k6(served.target, tmp_path / "summary.json", PROFILE="smoke", DURATION="6s",
                            **PATIENT_LIMITS)
    assert code == 0, output
    metrics = passed_every_threshold(tmp_path / "summary.json")
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


def test_request_files_are_the_generated_ones(tmp_path):
    subprocess.run([sys.executable, str(LOAD / "make_data.py"), "--out", str(tmp_path)], check=True, timeout=120,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    committed = sorted(path.name for path in (LOAD / "data").glob("*.json"))
    assert committed == sorted(path.name for path in tmp_path.glob("*.json"))
    for name in committed:
        assert (tmp_path / name).read_text() == (LOAD / "data" / name).read_text(), name


# --- `make load` against a gateway with mutual TLS and bearer tokens --------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """PEM files: the gateway's certificate and key from one CA, a client's from another, and both CAs."""
    folder = tmp_path_factory.mktemp("tls")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server, client = server_ca.issue_cert("127.0.0.1"), client_ca.issue_cert("load@recsys.test")
    blobs = {"ca": [server_ca.cert_pem], "server": server.cert_chain_pems, "server_key": [server.private_key_pem],
             "client_ca": [client_ca.cert_pem], "client": client.cert_chain_pems,
             "client_key": [client.private_key_pem]}
    for name, pems in blobs.items():
        (folder / f"{name}.pem").write_bytes(b"".join(pem.bytes() for pem in pems))
    return {name: folder / f"{name}.pem" for name in blobs}


@pytest.fixture(scope="module")
async def secured(tiny_triton, redis_server, tls_files, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path_factory.mktemp("data"),
                             tls_cert_file=tls_files["server"], tls_key_file=tls_files["server_key"],
                             tls_client_ca_file=tls_files["client_ca"], auth_tokens=json.dumps({READER: ["read"]}),
                             **PATIENT_TIMEOUTS)
    async with in_process(settings, CATALOG_SIZE) as running:
        yield running


async def make_load(secured: RunningGateway, tls_files: dict[str, Path], summary: Path, token: str, duration: str,
                    **script_env: str) -> tuple[int, str]:
    """`make load PROFILE=smoke` for `duration` with the client certificate, trusting the gateway's CA (paths relative
    to the repository root, as an operator gives them), with `token` (none if empty), and `script_env` in the
    environment, which the k6 script reads too. The virtual environment counts as installed."""
    files = {name: os.path.relpath(tls_files[key], ROOT) for name, key in MAKE_TLS_FILES.items()}
    variables = {"PROFILE": "smoke", "DURATION": duration, "GATEWAY": secured.target, "LOAD_SUMMARY": summary,
                 "TOKEN": token, **files}
    return await run(["make", "--no-print-directory", "--assume-old=.venv/.installed", "load",
                      *(f"{name}={value}" for name, value in variables.items())], **PATIENT_LIMITS, **script_env)


def requests_of(running: RunningGateway, method: str, code: str) -> float:
    return running.sample("recsys_requests_total", {"method": method, "code": code})


async def test_make_load_passes_over_mutual_tls_with_the_token_on_every_call(secured, tls_files, tmp_path):
    views_before = requests_of(secured, "RecordView", "OK")
    code, output = await make_load(secured, tls_files, tmp_path / "summary.json", READER, "3s")
    assert code == 0, output
    assert READER not in output  # neither make nor k6 shows the token
    passed_every_threshold(tmp_path / "summary.json")
    assert requests_of(secured, "RecordView", "OK") - views_before == VIEWS  # setup() sent the token too


async def test_make_load_without_the_token_fails_on_unauthenticated_requests(secured, tls_files, tmp_path):
    refused_before = requests_of(secured, "Recommend", "UNAUTHENTICATED")
    code, output = await make_load(secured, tls_files, tmp_path / "summary.json", "", "2s",
                                   MIX_HISTORY="0")  # without the history mix, setup() records no views
    assert code == 2 and "Error 99" in output, output  # make's report of k6's exit code for crossed thresholds
    refused = requests_of(secured, "Recommend", "UNAUTHENTICATED") - refused_before
    failed = json.loads((tmp_path / "summary.json").read_text())["metrics"]["recsys_failed_requests"]
    assert failed["value"] == 1 and failed["passes"] == refused > 0  # a Rate's "passes" counts true samples
