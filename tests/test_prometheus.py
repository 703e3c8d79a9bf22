"""deploy/prometheus and deploy/grafana against a real Prometheus scraping a real gateway and tritonserver.

promtool checks the configuration and rules; then Prometheus runs the deployed scrape configuration
(targets moved to this machine's ports, 1 s intervals) over real traffic, and every dashboard query,
recording rule and alert signal must return data. Stopping Redis must raise the dependency alert.
"""

import asyncio
import base64
import contextlib
import json
import math
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from gateway.config import Settings
from harness.gateway import RunningGateway, in_process
from harness.health import eventually
from ops.secrets import write_secrets
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from stack.net import free_port
from stack.redis import RedisServer
from tests.triton_fixtures import PATIENT_TIMEOUTS

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
LOAD_DATA = ROOT / "deploy" / "load" / "data"
CATALOG_SIZE = 64  # the request files of deploy/load use products among the first 64
NOT_RUNNING_HERE = {"qdrant", "redis"}  # embedded Qdrant engine; Redis has no exporter here
RATE_WINDOW = "1m"  # stands for Grafana's $__rate_interval: covers the whole test's traffic
TRAFFIC_ROUNDS = 6
DATA_DEADLINE_S = 30.0
ALERT = re.compile(r"^(?P<signal>.*\S)\s*(?:>=|<=|==|!=|>|<)\s*-?[\d.]+(?:e[+-]?\d+)?$", re.DOTALL)
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Prometheus:
    url: str
    client: httpx.AsyncClient

    async def query(self, expr: str) -> list[dict]:
        """The instant vector of an expression; fails the test when Prometheus refuses it."""
        response = await self.client.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    async def eventually(self, expr: str) -> list[dict]:
        """The expression's samples once at least one of them is a number (polls while scrapes and rules run)."""
        deadline = asyncio.get_running_loop().time() + DATA_DEADLINE_S
        while True:
            result = await self.query(expr)
            if any(math.isfinite(float(sample["value"][1])) for sample in result):
                return result
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"no data after {DATA_DEADLINE_S:.0f} s for {expr}: {result}")
            await asyncio.sleep(0.5)

    async def rules(self) -> list[dict]:
        response = await self.client.get(f"{self.url}/api/v1/rules")
        return [rule for group in response.json()["data"]["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], check=False, capture_output=True, text=True, timeout=60)


def local_config(served: RunningGateway, triton_metrics: str, prometheus_port: int) -> dict:
    """deploy/prometheus/prometheus.yml with this machine's targets, 1 s intervals and absolute rule paths."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / pattern) for pattern in config["rule_files"]]
    targets = {"recsys-gateway": served.metrics_target, "triton": triton_metrics,
               "prometheus": f"127.0.0.1:{prometheus_port}"}
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == set(targets) | NOT_RUNNING_HERE
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] in targets]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


@pytest.fixture(scope="module")
def redis(tmp_path_factory) -> Iterator[RedisServer]:
    """A redis-server of this module's own: the last test stops it."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
async def served(triton_server, redis, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis.url,
                        data_dir=tmp_path_factory.mktemp("data"), **PATIENT_TIMEOUTS)
    async with in_process(settings, CATALOG_SIZE, metrics_endpoint=True, grace_s=1) as served:
        yield served


@pytest.fixture(scope="module")
async def prometheus(served, triton_server, tmp_path_factory) -> AsyncIterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: apt-get install --no-install-recommends prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    triton_metrics = triton_server.metrics_url.removeprefix("http://").removesuffix("/metrics")
    (work / "prometheus.yml").write_text(yaml.safe_dump(local_config(served, triton_metrics, port)))
    log_path = work / "prometheus.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            "prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", stdout=log, stderr=subprocess.STDOUT)
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                await wait_until_ready(process, f"{url}/-/ready", client, log_path)
                await drive_traffic(served.target, TRAFFIC_ROUNDS)
                background = asyncio.create_task(keep_traffic(served.target))
                try:
                    yield Prometheus(url, client)
                finally:
                    background.cancel()
                    await asyncio.gather(background, return_exceptions=True)
        finally:
            process.terminate()
            await process.wait()


async def wait_until_ready(process: asyncio.subprocess.Process, ready_url: str, client: httpx.AsyncClient,
                           log_path: Path, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        assert process.returncode is None, log_path.read_text()[-2000:]
        try:
            if (await client.get(ready_url)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"prometheus was not ready after {timeout_s:.0f} s:\n{log_path.read_text()[-2000:]}")


def requests(name: str) -> list[dict]:
    return json.loads((LOAD_DATA / name).read_text())


def traffic() -> tuple[list[pb.RecordViewRequest], list[pb.RecommendRequest]]:
    """The views and queries of deploy/load's request files: every RPC the dashboards plot."""
    views = [pb.RecordViewRequest(user_id=view["userId"], product_id=view["productId"])
             for view in requests("record-views.json")]
    queries = [pb.RecommendRequest(image=base64.b64decode(query["image"]), user_id=query.get("userId", ""))
               for query in requests("recommend-image.json")[:2]]
    queries += [pb.RecommendRequest(product_id=query["productId"]) for query in requests("recommend-product.json")]
    queries += [pb.RecommendRequest(user_id=query["userId"]) for query in requests("recommend-history.json")]
    return views, queries


async def drive_traffic(target: str, rounds: int) -> None:
    """Views, then rounds of every query spread over several scrapes (rates need two samples); each must succeed."""
    views, queries = traffic()
    async with grpc.aio.insecure_channel(target) as channel:
        recommender, catalog = pb_grpc.RecommenderStub(channel), pb_grpc.CatalogStub(channel)
        for view in views:
            await recommender.RecordView(view, timeout=10)
        for round_ in range(rounds):
            for query in queries:
                await recommender.Recommend(query, timeout=30)
            await recommender.GetHistory(pb.GetHistoryRequest(user_id=views[0].user_id), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):  # NOT_FOUND, for the errors panel
                await recommender.Recommend(pb.RecommendRequest(product_id="no-such-product"), timeout=10)
            new = pb.Product(product_id=f"upserted-{round_}", category="Bag", image=queries[0].image)
            assert (await catalog.UpsertProducts(iter([new]), timeout=30)).upserted == 1
            await asyncio.sleep(0.5)


async def keep_traffic(target: str) -> None:
    """Queries until cancelled, so every rate in a ratio keeps a non-zero denominator while the tests read them.

    Failures are expected here (the last test stops Redis) and left to the tests that check statuses.
    """
    _, queries = traffic()
    async with grpc.aio.insecure_channel(target) as channel:
        recommender = pb_grpc.RecommenderStub(channel)
        while True:
            for query in queries:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await recommender.Recommend(query, timeout=30)
            await asyncio.sleep(0.5)


def panel_queries() -> list[tuple[str, str]]:
    """(dashboard: panel, PromQL) of every target of every dashboard, with Grafana's variables filled in."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", RATE_WINDOW)
                assert "$" not in expr, f"undefined variable in {panel['title']}: {expr}"
                found.append((f"{path.stem}: {panel['title']} ({target['refId']})", expr))
    return found


def test_promtool_accepts_the_configuration_and_the_rules(tmp_path):
    """Checked where the compose file mounts it: with the secrets Prometheus reads (Qdrant's API key) beside it."""
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    write_secrets(tmp_path / "prometheus" / "secrets")
    config = promtool("check", "config", str(tmp_path / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", *map(str, sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout


async def test_the_gateway_exports_metrics_that_pass_promtools_naming_lint(served, prometheus):
    exposition = (await prometheus.client.get(f"http://{served.metrics_target}/metrics")).text
    lint = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=exposition,
                                   capture_output=True, text=True, timeout=60, check=False)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    labels = {label for family in served.metrics.registry.collect() for sample in family.samples
              for label in sample.labels}
    assert labels <= {"method", "code", "stage", "dependency", "work", "experiment", "kind", "le"}, \
        "labels must stay bounded (configured arms, feedback kinds): never ids"


async def test_every_dashboard_panel_query_returns_data(prometheus):
    queries = panel_queries()
    assert len(queries) >= 20
    for where, expr in queries:
        result = await prometheus.eventually(expr)
        assert result, where


async def test_every_rule_is_healthy_and_every_alert_signal_has_data(prometheus):
    rules = await prometheus.rules()
    assert {rule["type"] for rule in rules} == {"recording", "alerting"}
    for rule in rules:
        if rule["type"] == "recording":
            await prometheus.eventually(rule["name"])
            continue
        assert rule["annotations"].get("runbook") and rule["labels"].get("severity"), rule["name"]
        match = ALERT.match(rule["query"].strip())
        assert match, f"{rule['name']} must read '<signal> <comparison> <threshold>': {rule['query']}"
        await prometheus.eventually(match["signal"])
    data_seen = datetime.now(UTC)

    async def evaluated_since_the_data() -> bool:
        return all(evaluated_at(rule) > data_seen for rule in await prometheus.rules())

    await eventually(evaluated_since_the_data, DATA_DEADLINE_S, "every rule's evaluation over the data")
    for rule in await prometheus.rules():
        assert rule["health"] == "ok" and not rule.get("lastError"), rule


def evaluated_at(rule: dict) -> datetime:
    """When Prometheus last evaluated a rule (its RFC 3339 time, nanoseconds cut to what datetime holds)."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", rule["lastEvaluation"]).replace("Z", "+00:00"))


async def test_a_healthy_stack_raises_no_availability_alert(prometheus):
    await prometheus.eventually('min(recsys_dependency_up)')
    assert await prometheus.query('min(recsys_dependency_up) == 1')
    quiet = ("RecsysDependencyDown", "RecsysScrapeTargetDown", "RecsysHighErrorRatio", "RecsysNoTraffic",
             "RecsysDegradedResponses")
    assert await prometheus.query(f'ALERTS{{alertname=~"{"|".join(quiet)}"}}') == []


async def test_stopping_redis_raises_dependency_down_and_degraded_responses(prometheus, served, redis):
    """Runs last in this module: it stops the module's redis-server."""
    redis.stop()
    query = pb.RecommendRequest(product_id=requests("recommend-product.json")[0]["productId"], user_id="shopper")
    async with grpc.aio.insecure_channel(served.target) as channel:
        recommender = pb_grpc.RecommenderStub(channel)
        for _ in range(TRAFFIC_ROUNDS * 2):
            response = await recommender.Recommend(query, timeout=30)
            assert list(response.degraded) == ["history"] and response.items
            await asyncio.sleep(0.25)
    down = await prometheus.eventually('ALERTS{alertname="RecsysDependencyDown", dependency="history"}')
    assert {sample["metric"]["alertstate"] for sample in down} <= {"pending", "firing"}
    await prometheus.eventually('ALERTS{alertname="RecsysDegradedResponses"}')
    assert not await prometheus.query('ALERTS{alertname="RecsysDependencyDown", dependency!="history"}')
