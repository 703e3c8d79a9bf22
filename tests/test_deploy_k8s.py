"""deploy/k8s: rendered by kustomize (with secrets made by `make deploy-secrets`), validated offline against the
Kubernetes and Prometheus Operator schemas, checked for the properties the service relies on (secure by default
first), and its gRPC probes asked of a real gateway configured as the manifest configures it."""

import base64
import copy
import functools
import json
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
from gateway.embedder import IMAGE_MODEL
from harness.gateway import RunningGateway, in_process
from harness.health import eventually
from model_export.triton_config import ALLOCATOR_ENV
from ops.secrets import write_secrets
from stack.redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32"
OPERATOR_API = "monitoring.coreos.com/v1"
WORKLOADS = ("Deployment", "StatefulSet")
SERVING = health_pb2.HealthCheckResponse.SERVING
CHECK_TIMEOUT_S = 30.0  # backends are checked every 2 s; the bound only keeps a failure from hanging


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render deploy/k8s (kubectl kustomize)")
    return subprocess.run([kubectl, "kustomize", str(directory)], check=False, capture_output=True, text=True,
                          timeout=120)


def kit_with_secrets(target: Path) -> Path:
    """A copy of deploy/k8s with a fresh set of secrets in it, as `make deploy-secrets` writes them."""
    shutil.copytree(K8S, target, ignore=shutil.ignore_patterns("secrets"))
    write_secrets(target / "secrets")
    return target


def rendered(directory: Path) -> list[dict]:
    result = kustomize(directory)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every object `kubectl apply -k deploy/k8s` would apply, once the secrets are made."""
    return rendered(kit_with_secrets(tmp_path_factory.mktemp("k8s") / "k8s"))


def find(manifests: list[dict], kind: str, name: str) -> dict:
    matches = [doc for doc in manifests if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


def containers(workload: dict) -> list[dict]:
    pod = workload["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


def env(container: dict, manifests: list[dict] | None = None) -> dict[str, str]:
    """A container's environment; with `manifests`, the variables set from a Secret too (their decoded value)."""
    values = {}
    for variable in container.get("env", []):
        if "value" in variable:
            values[variable["name"]] = variable["value"]
        elif manifests is not None and "secretKeyRef" in variable["valueFrom"]:
            reference = variable["valueFrom"]["secretKeyRef"]
            secret = find(manifests, "Secret", reference["name"])
            values[variable["name"]] = base64.b64decode(secret["data"][reference["key"]]).decode()
    return values


def gateway_containers(manifests: list[dict]) -> list[tuple[dict, dict]]:
    """(pod spec, container) of every container that runs the gateway (init containers only wait)."""
    return [(workload["spec"]["template"]["spec"], container)
            for workload in manifests if workload["kind"] in WORKLOADS
            for container in workload["spec"]["template"]["spec"]["containers"]
            if container["image"].split("/")[-1].startswith(("recsys-gateway", "gateway"))]


def mounted_secret(pod: dict, container: dict, path: str) -> str:
    """The name of the Secret whose volume holds the file at `path` in the container; fails if none does."""
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, f"{path} comes from {volume}, not from a Secret"
    return str(volume["secret"]["secretName"])


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


def test_every_gateway_wants_tokens_and_speaks_tls_with_credentials_from_secrets(manifests):
    """The kit is secure by default: this fails as soon as any gateway would run without authentication or TLS."""
    gateways = gateway_containers(manifests)
    assert gateways
    for pod, container in gateways:
        variables = env(container)
        assert "AUTH_TOKENS" not in variables, "tokens come from a mounted Secret, not from the manifest"
        tokens = find(manifests, "Secret", mounted_secret(pod, container, variables["AUTH_TOKENS_FILE"]))
        table = json.loads(base64.b64decode(tokens["data"]["tokens.json"]))
        scopes = sorted(tuple(granted) for granted in table.values())
        assert scopes == [("read",), ("write",)], "a read token for callers and a write token apart"
        for variable in ("TLS_CERT_FILE", "TLS_KEY_FILE"):
            assert mounted_secret(pod, container, variables[variable]) == "recsys-gateway-tls", variable
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"], "only the gateway reads them"
        for volume in pod["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["defaultMode"] & 0o007 == 0, f"{volume['name']} is not world-readable"
    tls = find(manifests, "Secret", "recsys-gateway-tls")
    assert tls["type"] == "kubernetes.io/tls" and {"tls.crt", "tls.key", "ca.crt"} <= set(tls["data"])


def test_redis_wants_a_password_and_qdrant_an_api_key_that_the_gateway_sends(manifests):
    (_, gateway), = gateway_containers(manifests)
    variables = env(gateway, manifests)
    redis = find(manifests, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    server, exporter = env(redis[0], manifests), env(redis[1], manifests)
    password = server["REDIS_PASSWORD"]
    assert len(password) >= 32 and redis[0]["args"][redis[0]["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert variables["REDIS_URL"].startswith(f"redis://:{password}@")
    assert exporter["REDIS_PASSWORD"] == password and server["REDISCLI_AUTH"] == password
    qdrant = env(find(manifests, "StatefulSet", "qdrant")["spec"]["template"]["spec"]["containers"][0], manifests)
    assert len(qdrant["QDRANT__SERVICE__API_KEY"]) >= 32
    assert variables["QDRANT_API_KEY"] == qdrant["QDRANT__SERVICE__API_KEY"]
    waiting = find(manifests, "Deployment", "recsys-gateway")["spec"]["template"]["spec"]["initContainers"][0]
    assert env(waiting, manifests)["QDRANT_API_KEY"] == qdrant["QDRANT__SERVICE__API_KEY"]


def test_network_policies_admit_callers_prometheus_and_the_gateway_only(manifests):
    policies = [doc for doc in manifests if doc["kind"] == "NetworkPolicy"]
    deny = find(manifests, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    for workload in (doc for doc in manifests if doc["kind"] in WORKLOADS):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        own = [p for p in policies if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"]["matchLabels"],
                                                                             labels)]
        assert own, f"{workload['metadata']['name']} has no policy of its own: nothing could reach it"
        ports = {port["name"] for container in workload["spec"]["template"]["spec"]["containers"]
                 for port in container["ports"]}
        for rule in own[0]["spec"]["ingress"]:
            assert {port["port"] for port in rule["ports"]} <= ports, workload["metadata"]["name"]
            if not rule.get("from"):
                assert [port["port"] for port in rule["ports"]] == ["health"], "only the health port is open"
    gateway_rules = find(manifests, "NetworkPolicy", "recsys-gateway")["spec"]["ingress"]
    grpc_rule = next(rule for rule in gateway_rules if rule["ports"] == [{"port": "grpc"}])
    assert grpc_rule["from"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "recsys-gateway-client": "true"}}}]
    for backend in ("redis", "triton", "qdrant"):
        sources = [source for rule in find(manifests, "NetworkPolicy", backend)["spec"]["ingress"]
                   for source in rule["from"]]
        assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "recsys-gateway"}}} in sources, backend


def test_without_the_secrets_the_kit_does_not_render(tmp_path):
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("secrets"))
    result = kustomize(tmp_path / "k8s")
    assert result.returncode != 0 and "secrets/tokens.json" in result.stderr


def test_cert_manager_can_issue_the_gateway_certificate_instead(tmp_path):
    kit = kit_with_secrets(tmp_path / "k8s")
    with (kit / "kustomization.yaml").open("a") as kustomization:
        kustomization.write("components:\n  - components/cert-manager\n")
    objects = rendered(kit)
    assert not [doc for doc in objects if doc["kind"] == "Secret" and doc["metadata"]["name"] == "recsys-gateway-tls"]
    certificate = find(objects, "Certificate", "recsys-gateway")["spec"]
    assert certificate["secretName"] == "recsys-gateway-tls"
    assert {"recsys-gateway", "recsys-gateway.recsys.svc.cluster.local"} <= set(certificate["dnsNames"])
    assert find(objects, "Issuer", certificate["issuerRef"]["name"])["spec"]["ca"]["secretName"] == "recsys-ca"
    (pod, container), = gateway_containers(objects)
    assert mounted_secret(pod, container, env(container)["TLS_CERT_FILE"]) == "recsys-gateway-tls"


def test_the_gateway_has_grpc_probes_a_read_only_root_and_scales_out(manifests):
    gateway = find(manifests, "Deployment", "recsys-gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    health_port = next(port["containerPort"] for port in container["ports"] if port["name"] == "health")
    assert int(env(container)["HEALTH_PORT"]) == health_port, "kubelet's gRPC probes speak plaintext: not the TLS port"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health_port, probe
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
    assert container["image"].split("/")[-1].split(":")[0] == "triton"  # deploy/docker/triton.Dockerfile
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
    assert server["args"][server["args"].index("--appendfsync") + 1] == "always", "no acknowledged view is lost"
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
    urls = env(container, manifests)
    for variable in ("TRITON_URL", "QDRANT_URL", "REDIS_URL"):
        host, port = urls[variable].split("://")[-1].split("/")[0].split("@")[-1].split(":")
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
    """With TLS and tokens on, as the manifest runs it, kubelet's plaintext probes get their answers from the health
    port. Readiness and liveness stay SERVING while Redis is down (answers degrade to visual only); the
    outage shows in recsys_dependency_up."""
    _, container = gateway_containers(manifests)[0]
    variables = env(container)
    secrets = tmp_path / "secrets"
    write_secrets(secrets)
    readiness = container["readinessProbe"]["grpc"].get("service", "")
    liveness = container["livenessProbe"]["grpc"]["service"]
    history_up = {"dependency": "history"}
    for redis, redis_up in ((redis_server, True), (RedisServer(tmp_path / "never-started"), False)):
        settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis.url,
                            data_dir=tmp_path / f"data-{redis_up}", health_port=0,
                            auth_tokens_file=secrets / Path(variables["AUTH_TOKENS_FILE"]).name,
                            tls_cert_file=secrets / Path(variables["TLS_CERT_FILE"]).name,
                            tls_key_file=secrets / Path(variables["TLS_KEY_FILE"]).name)
        async with in_process(settings, grace_s=1) as served:
            probe_target = f"127.0.0.1:{served.gateway.health_port}"
            # The gateway checks its backends at start, then every 2 s; the health status follows the check.
            await eventually(lambda: dependency_up(served, history_up) is not None, CHECK_TIMEOUT_S,
                             "the first backend check")
            assert dependency_up(served, history_up) == redis_up
            await eventually(functools.partial(serving, probe_target, readiness), CHECK_TIMEOUT_S,
                             "readiness SERVING")
            assert await serving(probe_target, liveness)


def test_triton_serves_in_explicit_mode_the_repository_its_init_container_copies_from_the_artifact_image(manifests):
    pod = find(manifests, "Deployment", "triton")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    triton = pod["containers"][0]
    repository = next(arg.split("=", 1)[1] for arg in triton["args"] if arg.startswith("--model-repository="))
    assert {"--model-control-mode=explicit", f"--load-model={Settings().model_name}",
            f"--load-model={IMAGE_MODEL}"} <= set(triton["args"])
    served = next(mount for mount in triton["volumeMounts"] if mount["mountPath"] == repository)
    filled = next(mount for mount in init["volumeMounts"] if mount["name"] == served["name"])
    assert served.get("readOnly") is True
    assert init["command"] == ["cp", "-R", "/models/.", filled["mountPath"] + "/"]  # the image's ADD destination
    assert init["image"].split("/")[-1].split(":")[0] == "model-repository"
    volume = next(volume for volume in pod["volumes"] if volume["name"] == served["name"])
    assert "emptyDir" in volume
    claims = [doc["metadata"]["name"] for doc in manifests if doc["kind"] == "PersistentVolumeClaim"]
    assert not [claim for claim in claims if "triton" in claim], "no volume that nothing fills"


def test_the_headless_triton_service_lists_every_pod_for_the_model_version_commands(manifests):
    triton = find(manifests, "Deployment", "triton")
    headless = find(manifests, "Service", "triton-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], triton["spec"]["template"]["metadata"]["labels"])
    assert [port["targetPort"] for port in headless["spec"]["ports"]] == ["grpc"]
    assert triton["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
