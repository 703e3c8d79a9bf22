"""The product as other teams get it: `pip install .` into a fresh virtual environment gives the serving packages
and the `recsys-gateway` command, which serves the gateway alone from environment variables (nothing of the
repository on its path) and refuses an unusable configuration with a message that names the variable."""

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from catalog_sources.fashion_mnist import load_split
from gateway.images import encode_png
from harness.gateway import spawned
from recsys_api.v1 import recsys_pb2 as pb
from recsys_client import RecsysClient
from stack.net import free_port
from tests.triton_fixtures import TINY_MODEL

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"gateway", "ranker", "recsys_api", "recsys_client"}
REPOSITORY_TOOLS = {"stack", "ops", "webui", "model_export", "training", "bench", "evaluation", "harness",
                    "catalog_sources", "tools", "tests"}
CONFIGURATION_ERROR = 2


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the package installed at the locked versions (from PyPI or pip's cache)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "-c",
                    str(ROOT / "requirements.lock"), str(ROOT)], check=True, timeout=600,
                   env={**os.environ, "PIP_NO_INPUT": "1"})
    return venv


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python3.*/site-packages"))


def environment(venv: Path, **variables: str) -> dict[str, str]:
    """Only what a deployment sets: no PYTHONPATH, no repository."""
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", **variables}


def test_the_package_holds_serving_and_its_client_and_none_of_the_repository_tools(installed: Path):
    site = site_packages(installed)
    top_level = {path.name for path in site.iterdir() if (path / "__init__.py").exists()}
    assert top_level >= PACKAGES
    assert not REPOSITORY_TOOLS & top_level
    assert not (site / "torch").exists(), "serving needs no torch"
    assert (site / "recsys_client" / "py.typed").exists() and (site / "recsys_api" / "v1" / "recsys_pb2.pyi").exists()


def test_a_bad_configuration_stops_the_command_with_the_variable_named(installed: Path, tmp_path: Path):
    command = [str(installed / "bin" / "recsys-gateway")]
    bad = subprocess.run(command, env=environment(installed, METRICS_PORT="9464x", RANK_EXCLUDE_VIEWED="maybe"),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert bad.returncode == CONFIGURATION_ERROR
    assert "METRICS_PORT='9464x'" in bad.stderr and "RANK_EXCLUDE_VIEWED='maybe'" in bad.stderr
    missing = subprocess.run(command, env=environment(installed), capture_output=True, text=True, timeout=60,
                             cwd=tmp_path, check=False)
    assert missing.returncode == CONFIGURATION_ERROR
    assert "TRITON_URL is not set" in missing.stderr


async def test_the_installed_command_serves_the_gateway_from_the_environment(installed: Path, tiny_triton,
                                                                             redis_server, tmp_path: Path):
    port, metrics_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    env = environment(installed, TRITON_URL=tiny_triton.grpc_url, REDIS_URL=redis_server.url,
                      DATA_DIR=str(tmp_path / "data"), MODEL_NAME=TINY_MODEL, GRPC_ADDRESS=target,
                      METRICS_PORT=str(metrics_port))
    images = load_split("test").images
    products = [pb.Product(product_id=f"installed-{n}", category="Bag", image=encode_png(images[n]))
                for n in range(3)]
    async with spawned([str(installed / "bin" / "recsys-gateway")], target, env, tmp_path / "gateway.log",
                       timeout_s=120) as process:
        async with RecsysClient(target) as client:
            assert await client.serving()
            assert await client.upsert_products(products) == 3
            response = await client.recommend(image=encode_png(images[0]), limit=2)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as scrape:
            metrics = scrape.read().decode()
    assert process.returncode == 0, "SIGTERM drains and exits cleanly"
    assert response.items[0].product_id == "installed-0"
    served = {(sample.labels["method"], sample.labels["code"]): sample.value
              for family in text_string_to_metric_families(metrics) if family.name == "recsys_requests"
              for sample in family.samples if sample.name == "recsys_requests_total"}
    assert served == {("UpsertProducts", "OK"): 1.0, ("Recommend", "OK"): 1.0}
