"""deploy/compose and the gateway's Dockerfile, checked without a Docker engine: the compose file
parses and references only what exists, the image installs the package (and only it) at the versions the
tests use and runs its console script, and its HEALTHCHECK answers for a real gateway. tests/test_package.py
installs the package in a fresh environment and serves through that console script."""

import asyncio
import json
import re
import shlex
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib.metadata import version
from pathlib import Path

import grpc
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.config import Settings
from harness.gateway import in_process
from harness.health import wait_for_health
from model_export.triton_config import ALLOCATOR_ENV
from ops.secrets import secret_files, write_secrets
from stack.net import free_port
from tests.lock import lock_pins

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "deploy" / "compose" / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "gateway.Dockerfile"
DOCKERIGNORE = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
STACK = {"triton", "qdrant", "redis", "redis-exporter", "gateway", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each a list of (INSTRUCTION, arguments)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = [line.strip().split(maxsplit=1) for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    found: list[list[tuple[str, str]]] = []
    for instruction, arguments in instructions:
        if instruction.upper() == "FROM":
            found.append([])
        if found:
            found[-1].append((instruction.upper(), arguments))
    return found


def arguments(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [args for name, args in stage if name == instruction]


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def ignored(path: str) -> bool:
    """Whether the .dockerignore beside the Dockerfile keeps `path` out of the build context."""
    verdict = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch("/".join(parts[:end]), pattern) for end in range(1, len(parts) + 1)):
            verdict = not negated
    return verdict


def test_the_compose_file_runs_the_whole_stack_from_files_that_exist(compose):
    services = compose["services"]
    assert set(services) == STACK
    base = COMPOSE_FILE.parent
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./secrets/"):
                assert Path(source).name in secret_files(), f"{name}: {source} is not one `make deploy-secrets` writes"
            elif source.startswith("."):
                assert (base / source).exists(), f"{name}: {source} (model_repository comes from `make model`)"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    build = services["gateway"]["build"]
    assert (base / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def env_file(service: dict, folder: Path) -> dict[str, str]:
    """The variables of a service's env_file, as `make deploy-secrets` writes it into `folder`."""
    lines = (folder / Path(service["env_file"]).name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


def test_the_gateway_reaches_every_backend_by_service_name(compose, tmp_path):
    write_secrets(tmp_path)
    gateway = compose["services"]["gateway"]
    environment = {**env_file(gateway, tmp_path), **gateway["environment"]}
    for variable, service in (("TRITON_URL", "triton"), ("QDRANT_URL", "qdrant"), ("REDIS_URL", "redis")):
        assert environment[variable].split("://")[-1].split("@")[-1].startswith(f"{service}:"), variable
    assert gateway["read_only"] is True
    assert ALLOCATOR_ENV.items() <= compose["services"]["triton"]["environment"].items()


def test_the_stack_is_secure_by_default_with_secrets_it_does_not_ship(compose, stages, tmp_path):
    """Tokens and TLS on the gateway, a password on Redis, an API key on Qdrant: all from ./secrets, which
    `make deploy-secrets` writes and git ignores; this fails as soon as the gateway would run without them."""
    services = compose["services"]
    write_secrets(tmp_path)
    gateway = services["gateway"]
    environment = gateway["environment"]
    mounted = {name: f"/run/secrets/{name}" for name in gateway["secrets"]}
    assert environment["AUTH_TOKENS_FILE"] == mounted["tokens.json"] and "AUTH_TOKENS" not in environment
    assert (environment["TLS_CERT_FILE"], environment["TLS_KEY_FILE"]) == (mounted["tls.crt"], mounted["tls.key"])
    for name, secret in compose["secrets"].items():
        assert secret["file"].startswith("secrets/") and (tmp_path / Path(secret["file"]).name).exists(), name
    assert "secrets/" in (ROOT / ".gitignore").read_text().replace("deploy/compose/", "")
    redis = services["redis"]
    password = env_file(redis, tmp_path)["REDIS_PASSWORD"]
    command = " ".join(redis["command"])
    assert '--requirepass "$$REDIS_PASSWORD"' in command and "--appendfsync always" in command
    assert env_file(gateway, tmp_path)["REDIS_URL"].startswith(f"redis://:{password}@redis:")
    assert env_file(services["redis-exporter"], tmp_path)["REDIS_PASSWORD"] == password
    api_key = env_file(services["qdrant"], tmp_path)["QDRANT__SERVICE__API_KEY"]
    assert env_file(gateway, tmp_path)["QDRANT_API_KEY"] == api_key
    assert "./secrets/qdrant-api-key:/etc/prometheus/secrets/qdrant-api-key:ro" in services["prometheus"]["volumes"]
    image_environment = " ".join(arguments(stages[-1], "ENV"))
    assert f"HEALTH_PORT={environment['HEALTH_PORT']}" in image_environment, "the HEALTHCHECK asks this port"


def test_prometheus_scrapes_compose_services_and_grafana_loads_the_provisioned_files(compose):
    services = compose["services"]
    config_mount = next(v for v in services["prometheus"]["volumes"] if v.endswith(":/etc/prometheus:ro"))
    prometheus_dir = (COMPOSE_FILE.parent / config_mount.split(":")[0]).resolve()
    config = yaml.safe_load((prometheus_dir / "prometheus.yml").read_text())
    metrics_port = services["gateway"]["environment"]["METRICS_PORT"]
    for job in config["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in services or host == "localhost", f"{job['job_name']}: {target}"
            if host == "gateway":
                assert port == metrics_port
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"] if volume.startswith("."))
    provisioning = COMPOSE_FILE.parent / next(src for src, dst in mounts.items() if dst == "/etc/grafana/provisioning")
    provider = yaml.safe_load((provisioning / "dashboards" / "recsys.yml").read_text())["providers"][0]
    dashboards_source = next(src for src, dst in mounts.items() if dst == provider["options"]["path"])
    assert list((COMPOSE_FILE.parent / dashboards_source).glob("*.json"))
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"].removeprefix("http://").split(":")[0] in services


def test_the_image_is_slim_non_root_runs_the_console_script_and_checks_its_own_health(stages):
    final = stages[-1]
    assert exec_form(arguments(final, "USER")[-1])[0].isdigit() and int(arguments(final, "USER")[-1]) > 0
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE.read_text(), re.MULTILINE)
    exposed = {int(port) for args in arguments(final, "EXPOSE") for port in args.split()}
    defaults = Settings()
    health_port = int(next(args for args in arguments(final, "ENV") if "HEALTH_PORT=" in args).split(
        "HEALTH_PORT=")[1].split()[0])
    assert exposed == {int(defaults.grpc_address.rsplit(":", 1)[1]), health_port, defaults.metrics_port}
    assert f"localhost:{health_port}" in arguments(final, "HEALTHCHECK")[0], "the probe asks the plaintext port"
    healthcheck = arguments(final, "HEALTHCHECK")[0]
    assert "/app/healthcheck.py" in healthcheck
    assert any(args.split() == ["deploy/docker/healthcheck.py", "healthcheck.py"] for args in arguments(final, "COPY"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert exec_form(arguments(final, "CMD")[0]) == ["recsys-gateway"]
    assert scripts["recsys-gateway"] == "gateway.__main__:main"


def test_the_image_holds_the_package_and_only_the_package(stages):
    """The build stage copies the packaged folders (pyproject's packages.find) and installs them; the final
    stage gets the installed environment and the health check script, nothing of the repository's tools."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packaged = {name for name in include["include"] if "." not in name}
    copied = {args.split()[0] for args in arguments(stages[0], "COPY")}
    assert copied == packaged | {"requirements.lock"}, "plus pyproject.toml and README.md, copied with the lock"
    assert "pip install --no-cache-dir -c requirements.lock ." in " ".join(arguments(stages[0], "RUN"))
    final_sources = {args.split()[0] for args in arguments(stages[-1], "COPY")}
    assert final_sources == {"--from=build", "deploy/docker/healthcheck.py"}
    for lab in ("stack", "ops", "webui", "model_export", "training", "bench", "evaluation", "harness",
                "catalog_sources", "tools", "tests"):
        assert ignored(f"{lab}/__init__.py"), f"{lab}/ is not sent to the image build"


def test_every_file_the_image_copies_exists_in_the_build_context(stages):
    for stage in stages:
        for args in arguments(stage, "COPY"):
            if args.startswith("--from="):
                continue
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert not ignored(source), f"{source} is excluded by {DOCKERIGNORE.name}"


def test_the_package_depends_on_the_locked_versions_the_tests_ran_with():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = lock_pins()
    for requirement in map(Requirement, dependencies):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name]) and version(name) == pins[name], name
    assert "torch" not in {canonicalize_name(Requirement(line).name) for line in dependencies}


async def healthcheck(target: str) -> subprocess.CompletedProcess[str]:
    """Runs the image's HEALTHCHECK script (in a thread: the gateway serves on this event loop)."""
    command = [sys.executable, str(ROOT / "deploy" / "docker" / "healthcheck.py"), target]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30, check=False)


async def test_the_healthcheck_reports_a_serving_gateway_and_fails_without_one(triton_server, redis_server, tmp_path):
    settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis_server.url, data_dir=tmp_path)
    async with in_process(settings, grace_s=1) as served:
        async with grpc.aio.insecure_channel(served.target) as channel:
            await wait_for_health(channel)  # NOT_SERVING until the gateway's first backend check
        healthy = await healthcheck(served.target)
        assert healthy.returncode == 0, healthy.stderr
        assert "SERVING" in healthy.stdout
    nobody = await healthcheck(f"127.0.0.1:{free_port()}")
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr
