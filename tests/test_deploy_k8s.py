"""deploy/k8s: rendered by kustomize, validated offline against the Kubernetes and Prometheus Operator
schemas, checked for the properties the service relies on, and its gRPC probes asked of a real gateway."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import Settings
from harness.gateway import RunningGateway, in_process
from harness.health import eventually
from model_export.triton_config import ALLOCATOR_ENV
from stack.redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32"
OPERATOR_API = "monitoring.coreos.com/v1"
WORKLOADS = ("Deployment", "StatefulSet")
SERVING = health_pb2.HealthCheckResponse.SERVING
CHECK_TIMEOUT_S = 30.0  # backends are checked every 2 s; the bound only keeps a failure from hanging


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    """Every object `kubectl apply -k deploy/k8s` would apply."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render deploy/k8s (kubectl kustomize)")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], check=False, capture_output=True, text=True,
                              timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def find(manifests: list[dict], kind: str, name: str) -> dict:
    matches = [doc for doc in manifests if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


def containers(workload: dict) -> list[dict]:
    pod = workload["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


def env(container: dict) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_core_objects_are_valid_against_the_kubernetes_schemas(manifests):
    core = [doc for doc in manifests if doc["apiVersion"] != OPERATOR_API]
    assert {doc["kind"] for doc in core} >= {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler",
                                             "PodDisruptionBudget", "ConfigMap"}
    for doc in core:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, error.path))}: {error.message}")


def test_the_schema_validation_rejects_a_misspelt_field(manifests):
    deployment = copy.deepcopy(find(manifests, "Deployment", "recsys-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_prometheus_operator_objects_match_their_crd_schemas(manifests):
    # Models generated from the operator's CRD schemas (imported here: the import takes seconds).
    from cloudcoil.models.prometheus_operator import v1

    custom = [doc for doc in manifests if doc["apiVersion"] == OPERATOR_API]
    assert sorted({doc["kind"] for doc in custom}) == ["PrometheusRule", "ServiceMonitor"]
    for doc in custom:
        model = getattr(v1, doc["kind"]).model_validate(doc)
        # A field the schema does not know is dropped by the model: the round trip shows it.
        assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc


def test_the_prometheus_rule_carries_the_rules_file_unchanged(manifests):
    generated = subprocess.run([sys.executable, str(K8S / "prometheus_rule.py")], capture_output=True, text=True,
                               timeout=60, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert (K8S / "prometheus-rule.yaml").read_text() == generated, \
        "regenerate: python deploy/k8s/prometheus_rule.py > deploy/k8s/prometheus-rule.yaml"
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "recsys.yml").read_text())
    assert find(manifests, "PrometheusRule", "recsys")["spec"] == rules


def test_every_container_is_unprivileged_with_requests_and_limits(manifests):
    for workload in (doc for doc in manifests if doc["kind"] in WORKLOADS):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where


def test_the_gateway_has_grpc_probes_a_read_only_root_and_scales_out(manifests):
    gateway = find(manifests, "Deployment", "recsys-gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    grpc_port = next(port["containerPort"] for port in container["ports"] if port["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    assert container["readinessProbe"]["grpc"].get("service", "") == ""  # follows the backends
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"  # ignores them
    for each in containers(gateway):
        assert each["securityContext"]["readOnlyRootFilesystem"] is True, each["name"]
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    hpa = find(manifests, "HorizontalPodAutoscaler", "recsys-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "recsys-gateway"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = find(manifests, "PodDisruptionBudget", "recsys-gateway")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_triton_runs_on_gpu_nodes_with_the_production_model_config(manifests):
    triton = find(manifests, "Deployment", "triton")
    pod = triton["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(toleration["key"] == "nvidia.com/gpu" for toleration in pod["tolerations"])
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in container["args"]
    assert ALLOCATOR_ENV.items() <= {variable["name"]: variable["value"] for variable in container["env"]}.items()
    assert find(manifests, "PodDisruptionBudget", "triton")["spec"]["minAvailable"] < triton["spec"]["replicas"]


def test_qdrant_is_a_sharded_and_replicated_cluster(manifests):
    qdrant = find(manifests, "StatefulSet", "qdrant")
    config = yaml.safe_load(find(manifests, "ConfigMap", "qdrant-config")["data"]["production.yaml"])
    peers = qdrant["spec"]["replicas"]
    assert peers >= 3 and config["cluster"]["enabled"] is True
    collection = config["storage"]["collection"]
    assert 2 <= collection["replication_factor"] <= peers
    assert collection["shard_number_per_node"] >= 1
    assert find(manifests, "PodDisruptionBudget", "qdrant")["spec"]["maxUnavailable"] < collection["replication_factor"]
    headless = find(manifests, "Service", qdrant["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert qdrant["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "storage"
    init = find(manifests, "Deployment", "recsys-gateway")["spec"]["template"]["spec"]["initContainers"][0]
    assert int(env(init)["QDRANT_PEERS"]) == peers


def test_redis_persists_an_append_only_file_on_a_volume(manifests):
    redis = find(manifests, "StatefulSet", "redis")
    server = redis["spec"]["template"]["spec"]["containers"][0]
    assert server["args"][server["args"].index("--appendonly") + 1] == "yes"
    data = next(mount for mount in server["volumeMounts"] if mount["mountPath"] == "/data")
    assert data["name"] in {claim["metadata"]["name"] for claim in redis["spec"]["volumeClaimTemplates"]}


def test_services_and_monitors_reach_existing_pods_ports_and_alert_jobs(manifests):
    workloads = [doc for doc in manifests if doc["kind"] in WORKLOADS]
    services = [doc for doc in manifests if doc["kind"] == "Service"]
    for service in services:
        backing = [w for w in workloads
                   if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert backing, service["metadata"]["name"]
        ports = {port["name"] for w in backing for c in w["spec"]["template"]["spec"]["containers"]
                 for port in c["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports, service["metadata"]["name"]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "recsys.yml").read_text())
    target_down = next(rule for group in rules["groups"] for rule in group["rules"]
                       if rule.get("alert") == "RecsysScrapeTargetDown")
    for monitor in (doc for doc in manifests if doc["kind"] == "ServiceMonitor"):
        selected = [s for s in services if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(selected) == 1, monitor["metadata"]["name"]  # one Service: no target is scraped twice
        service = selected[0]
        assert ({endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
                <= {p["name"] for p in service["spec"]["ports"]})
        assert service["metadata"]["name"] in target_down["expr"]  # the job label is the Service's name


def test_the_gateway_reaches_its_backends_through_services(manifests):
    container = find(manifests, "Deployment", "recsys-gateway")["spec"]["template"]["spec"]["containers"][0]
    urls = env(container)
    for variable in ("TRITON_URL", "QDRANT_URL", "REDIS_URL"):
        host, port = urls[variable].split("://")[-1].split("/")[0].split(":")
        service = find(manifests, "Service", host)
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}, variable
    metrics_port = next(port["containerPort"] for port in container["ports"] if port["name"] == "metrics")
    assert int(urls["METRICS_PORT"]) == metrics_port


async def serving(target: str, service: str) -> bool:
    """Whether the gateway's health service answers SERVING for `service`, as a kubelet gRPC probe asks."""
    async with grpc.aio.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return (await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)).status == SERVING


def dependency_up(served: RunningGateway, labels: dict[str, str]) -> float | None:
    """The gateway's recsys_dependency_up for `labels`; None until it has first checked its backends."""
    return served.metrics.registry.get_sample_value("recsys_dependency_up", labels)


async def test_the_probes_ask_what_a_real_gateway_answers(manifests, triton_server, redis_server, tmp_path):
    """Readiness and liveness stay SERVING while Redis is down (answers degrade to visual only); the
    outage shows in recsys_dependency_up."""
    container = find(manifests, "Deployment", "recsys-gateway")["spec"]["template"]["spec"]["containers"][0]
    readiness = container["readinessProbe"]["grpc"].get("service", "")
    liveness = container["livenessProbe"]["grpc"]["service"]
    history_up = {"dependency": "history"}
    for redis, redis_up in ((redis_server, True), (RedisServer(tmp_path / "never-started"), False)):
        settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis.url,
                            data_dir=tmp_path / f"data-{redis_up}")
        async with in_process(settings, grace_s=1) as served:
            # The gateway checks its backends at start, then every 2 s; the health status follows the check.
            await eventually(lambda: dependency_up(served, history_up) is not None, CHECK_TIMEOUT_S,
                             "the first backend check")
            assert dependency_up(served, history_up) == redis_up
            await eventually(lambda: serving(served.target, readiness), CHECK_TIMEOUT_S, "readiness SERVING")
            assert await serving(served.target, liveness)
