"""deploy/compose and the gateway's Dockerfile, checked without a Docker engine: the compose file
parses and references only what exists, and the image is built with the commands and versions the
tests use, runs without the build-only packages, and its HEALTHCHECK answers for a real gateway."""

import asyncio
import json
import re
import shlex
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.config import Settings
from model_export.triton_config import ALLOCATOR_ENV
from stack.net import free_port
from tests.gateway_fixtures import served_gateway

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


def lock_pins() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = (line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    return {canonicalize_name(name): pinned.strip() for name, pinned in pins}


def ignored(path: str) -> bool:
    """Whether the .dockerignore beside the Dockerfile keeps `path` out of the build context."""
    verdict = False
    for pattern in DOCKERIGNORE.read_text().splitlines():
        pattern = pattern.strip()
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
            if source.startswith("."):
                assert (base / source).exists(), f"{name}: {source} (model_repository comes from `make model`)"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    build = services["gateway"]["build"]
    assert (base / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_the_gateway_reaches_every_backend_by_service_name(compose):
    environment = compose["services"]["gateway"]["environment"]
    for variable, service in (("TRITON_URL", "triton"), ("QDRANT_URL", "qdrant"), ("REDIS_URL", "redis")):
        assert environment[variable].split("://")[-1].startswith(f"{service}:"), variable
    assert compose["services"]["gateway"]["read_only"] is True
    assert ALLOCATOR_ENV.items() <= compose["services"]["triton"]["environment"].items()
    assert "--appendonly" in compose["services"]["redis"]["command"]


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


def test_the_image_is_slim_non_root_and_checks_its_own_health(stages):
    final = stages[-1]
    assert exec_form(arguments(final, "USER")[-1])[0].isdigit() and int(arguments(final, "USER")[-1]) > 0
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE.read_text(), re.MULTILINE)
    exposed = {int(port) for args in arguments(final, "EXPOSE") for port in args.split()}
    defaults = Settings()
    assert exposed == {int(defaults.grpc_address.rsplit(":", 1)[1]), defaults.metrics_port}
    healthcheck = arguments(final, "HEALTHCHECK")[0]
    assert "/app/healthcheck.py" in healthcheck
    assert any(args.split() == ["deploy/docker/healthcheck.py", "healthcheck.py"] for args in arguments(final, "COPY"))
    assert exec_form(arguments(final, "CMD")[0])[:3] == ["python", "-m", "stack.run"]


def test_every_file_the_image_copies_exists_in_the_build_context(stages):
    for stage in stages:
        for args in arguments(stage, "COPY"):
            if args.startswith("--from="):
                continue
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert not ignored(source), f"{source} is excluded by {DOCKERIGNORE.name}"
    assert ignored("gateway/api/recsys/v1/recsys_pb2.py"), "generated stubs come from the build stage"


def test_the_image_installs_the_locked_serving_dependencies_the_tests_ran_with(stages):
    run = " ".join(arguments(stages[0], "RUN"))
    snippet = re.search(r'python -c "([^"]+)"', run)[1]
    listed = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, check=True,
                            timeout=30).stdout.split()
    assert "-c requirements.lock -r runtime-requirements.txt" in run
    pins = lock_pins()
    for requirement in map(Requirement, listed):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name]) and version(name) == pins[name], name
    assert "torch" not in {canonicalize_name(Requirement(line).name) for line in listed}


def test_the_image_generates_the_stubs_with_the_makefile_command(stages):
    makefile = (ROOT / "Makefile").read_text()
    stubs_dir = re.search(r"^STUBS_DIR := (\S+)$", makefile, re.MULTILINE)[1]
    assert re.search(r"^\t\$\(PY\) -m stack\.protos --out \$\(STUBS_DIR\)$", makefile, re.MULTILINE)
    assert f"python -m stack.protos --out {stubs_dir}" in arguments(stages[0], "RUN")
    assert "grpcio-tools" in lock_pins()


def test_the_entry_point_runs_without_build_only_packages_and_its_modules_are_copied(stages):
    build_only = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["build"]
    build_dists = {canonicalize_name(Requirement(line).name) for line in build_only}
    blocked = sorted(module for module, dists in packages_distributions().items()
                     if {canonicalize_name(dist) for dist in dists} & build_dists)
    assert {"torch", "grpc_tools", "pytriton"} <= set(blocked)
    entry = exec_form(arguments(stages[-1], "CMD")[0])[2]
    probe = ("import json, sys\n"
             f"sys.modules.update(dict.fromkeys({blocked!r}))\n"  # None in sys.modules: the import fails
             f"import {entry}\n"
             "print(json.dumps(sorted(getattr(m, '__file__', None) or '' for m in list(sys.modules.values()))))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {Path(file).relative_to(ROOT).as_posix() for file in json.loads(result.stdout)
                if file.startswith(str(ROOT)) and "/.venv/" not in file}
    copied = [args.split()[:-1] for args in arguments(stages[-1], "COPY")]
    copied_paths = {source for sources in copied for source in sources if not source.startswith("--from")}
    copied_paths.add("gateway/api")  # from the build stage
    for module in imported:
        assert any(module == path or module.startswith(path + "/") for path in copied_paths), module


async def healthcheck(target: str) -> subprocess.CompletedProcess[str]:
    """Runs the image's HEALTHCHECK script (in a thread: the gateway serves on this event loop)."""
    command = [sys.executable, str(ROOT / "deploy" / "docker" / "healthcheck.py"), target]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30, check=False)


async def test_the_healthcheck_reports_a_serving_gateway_and_fails_without_one(triton_server, redis_server, tmp_path):
    async with served_gateway(triton_server, redis_server, tmp_path) as served:
        for _ in range(20):  # NOT_SERVING until the gateway's first backend check
            healthy = await healthcheck(served.target)
            if healthy.returncode == 0:
                break
            await asyncio.sleep(0.2)
        assert healthy.returncode == 0, healthy.stderr
        assert "SERVING" in healthy.stdout
    nobody = await healthcheck(f"127.0.0.1:{free_port()}")
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr
