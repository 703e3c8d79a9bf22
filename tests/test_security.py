"""Security and privacy over the real gRPC server: bearer tokens and scopes, TLS and mutual TLS with
certificates made here, history expiry, ForgetUser, and no user id in clear in logs or metrics."""

import asyncio
import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import cast

import aiohttp
import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import generate_latest
from redis.asyncio import Redis

from gateway.auth import SCOPE_OF_METHOD, Authenticator, authenticator_for
from gateway.config import Settings, SettingsError
from gateway.domain import PermissionDenied, Unauthenticated
from harness.gateway import RunningGateway, in_process
from harness.health import SERVING, eventually, wait_for_health
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from recsys_client import RecsysClient
from stack.net import free_port
from tests.triton_fixtures import tiny_settings
from webui import start_webui

ROOT = Path(__file__).resolve().parent.parent
READER = "reader-token-0123456789abcdef"
WRITER = "writer-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdefgh"
TOKENS = {READER: ["read"], WRITER: ["write"], ADMIN: ["read", "write"]}
PRODUCT = "fmnist-train-000001"
SMALL_CATALOG = 16


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


# --- the token table ---------------------------------------------------------------------------

def test_every_method_of_both_services_has_a_scope():
    services = [pb.DESCRIPTOR.services_by_name[name] for name in ("Recommender", "Catalog")]
    methods = {f"/{service.full_name}/{method.name}" for service in services for method in service.methods}
    assert methods == set(SCOPE_OF_METHOD)


@pytest.mark.parametrize("table, problem", [
    ("{not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ("{}", "the token table is empty"),
    (json.dumps({"short": ["read"]}), "at least 16"),
    (json.dumps({"has a space in it 123": ["read"]}), "without spaces"),
    (json.dumps({READER: ["admin"]}), "scopes among"),
    (json.dumps({READER: "read"}), "scopes among"),
    (json.dumps({READER: []}), "scopes among"),
])
def test_a_bad_token_table_stops_the_start_with_a_clear_reason_that_never_shows_a_token(table, problem):
    with pytest.raises(ValueError, match=problem) as error:
        Authenticator.from_json(table, "AUTH_TOKENS")
    assert READER not in str(error.value)


def test_tokens_come_from_a_file_or_the_environment_and_auth_is_off_without_them(tmp_path, monkeypatch):
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps(TOKENS))
    assert authenticator_for(Settings()) is None
    from_file = authenticator_for(Settings(auth_tokens_file=tokens_file))
    monkeypatch.setenv("AUTH_TOKENS", json.dumps(TOKENS))
    from_env = authenticator_for(Settings.from_env())
    for authenticator in (from_file, from_env):
        assert authenticator is not None
        authenticator.check("/recsys.v1.Recommender/Recommend", bearer(READER))
        with pytest.raises(PermissionDenied):
            authenticator.check("/recsys.v1.Catalog/DeleteProducts", bearer(READER))
        with pytest.raises(Unauthenticated):
            authenticator.check("/recsys.v1.Recommender/Recommend", bearer(WRITER + "x"))
    assert READER not in repr(Settings.from_env())
    monkeypatch.setenv("AUTH_TOKENS_FILE", str(tokens_file))
    with pytest.raises(SettingsError, match="not both") as refused:
        Settings.from_env()
    assert READER not in str(refused.value)


# --- bearer tokens through the server ------------------------------------------------------------

@pytest.fixture(scope="module")
async def authenticated(tiny_triton, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path_factory.mktemp("data"),
                             auth_tokens=json.dumps(TOKENS))
    async with in_process(settings, SMALL_CATALOG) as running:
        yield running


@pytest.fixture(scope="module")
async def channel(authenticated) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(authenticated.target) as channel:
        yield channel


def calls(channel: grpc.aio.Channel) -> dict[str, Callable[[Sequence[tuple[str, str]]], Awaitable[object]]]:
    """One call of every method, each a function of the call's metadata."""
    recommender, catalog = pb_grpc.RecommenderStub(channel), pb_grpc.CatalogStub(channel)

    async def no_products():
        return
        yield

    return {
        "Recommend": lambda md: recommender.Recommend(pb.RecommendRequest(product_id=PRODUCT), metadata=md,
                                                      timeout=10),
        "RecordView": lambda md: recommender.RecordView(pb.RecordViewRequest(user_id="auth-user", product_id=PRODUCT),
                                                        metadata=md, timeout=10),
        "GetHistory": lambda md: recommender.GetHistory(pb.GetHistoryRequest(user_id="auth-user"), metadata=md,
                                                        timeout=10),
        "ForgetUser": lambda md: recommender.ForgetUser(pb.ForgetUserRequest(user_id="auth-user"), metadata=md,
                                                        timeout=10),
        "UpsertProducts": lambda md: catalog.UpsertProducts(no_products(), metadata=md, timeout=10),
        "DeleteProducts": lambda md: catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["none"]),
                                                            metadata=md, timeout=10),
        "GetProductImage": lambda md: catalog.GetProductImage(pb.GetProductImageRequest(product_id=PRODUCT),
                                                              metadata=md, timeout=10),
    }


READS = {"Recommend", "RecordView", "GetHistory", "GetProductImage"}
WRITES = {"ForgetUser", "UpsertProducts", "DeleteProducts"}


async def status_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert error.details()
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("token, allowed", [(READER, READS), (WRITER, WRITES), (ADMIN, READS | WRITES)])
async def test_each_token_may_call_the_methods_of_its_scopes_only(channel, token, allowed):
    for method, call in calls(channel).items():
        expected = grpc.StatusCode.OK if method in allowed else grpc.StatusCode.PERMISSION_DENIED
        assert await status_of(call(bearer(token))) == expected, method


@pytest.mark.parametrize("metadata", [
    (), bearer("not-a-known-token-at-all"), (("authorization", f"Basic {READER}"),),
    (("authorization", "Bearer"),), (("authorization", READER),), bearer(READER) + bearer(ADMIN),
], ids=["none", "unknown", "basic scheme", "no token", "no scheme", "two headers"])
async def test_calls_without_one_valid_bearer_token_are_unauthenticated(channel, metadata):
    for method, call in calls(channel).items():
        assert await status_of(call(metadata)) == grpc.StatusCode.UNAUTHENTICATED, method


async def test_the_token_is_checked_before_the_message_is_read(channel):
    garbage = channel.unary_unary("/recsys.v1.Recommender/Recommend")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await garbage(b"\xff\xff", timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await garbage(b"\xff\xff", metadata=bearer(READER), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection_stay_open_without_a_token(channel, authenticated):
    await wait_for_health(channel, SERVING)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for answer in stub.ServerReflectionInfo(ask()):
        assert "recsys.v1.Recommender" in {service.name for service in answer.list_services_response.service}
    refused = authenticated.sample("recsys_requests_total", {"method": "Recommend", "code": "UNAUTHENTICATED"})
    assert refused >= 1


# --- TLS and mutual TLS ----------------------------------------------------------------------------

def write_pem(path: Path, pem: bytes) -> Path:
    path.write_bytes(pem)
    return path


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(server_ca, client_ca, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    server = server_ca.issue_cert("127.0.0.1", "localhost")
    return {
        "cert": write_pem(folder / "server.pem", b"".join(blob.bytes() for blob in server.cert_chain_pems)),
        "key": write_pem(folder / "server.key", server.private_key_pem.bytes()),
        "client_ca": write_pem(folder / "client-ca.pem", client_ca.cert_pem.bytes()),
    }


def client_credentials(server_ca: trustme.CA, client_ca: trustme.CA | None = None) -> grpc.ChannelCredentials:
    """Trusts the server's CA; with client_ca, presents a client certificate it issued."""
    if client_ca is None:
        return grpc.ssl_channel_credentials(root_certificates=server_ca.cert_pem.bytes())
    client = client_ca.issue_cert("client@recsys.test")
    return grpc.ssl_channel_credentials(root_certificates=server_ca.cert_pem.bytes(),
                                        private_key=client.private_key_pem.bytes(),
                                        certificate_chain=b"".join(blob.bytes() for blob in client.cert_chain_pems))


async def recommend_status(channel: grpc.aio.Channel) -> grpc.StatusCode:
    return await status_of(pb_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(product_id=PRODUCT),
                                                                      timeout=5))


async def test_tls_serves_clients_that_trust_the_server_certificate_only(tiny_triton, redis_server, tmp_path,
                                                                        server_ca, tls_files):
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path,
                             tls_cert_file=tls_files["cert"], tls_key_file=tls_files["key"])
    async with in_process(settings, SMALL_CATALOG) as running:
        async with grpc.aio.secure_channel(running.target, client_credentials(server_ca)) as channel:
            assert await recommend_status(channel) == grpc.StatusCode.OK
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status in (SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
        async with grpc.aio.secure_channel(running.target, client_credentials(trustme.CA())) as channel:
            assert await recommend_status(channel) == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(running.target) as channel:
            assert await recommend_status(channel) == grpc.StatusCode.UNAVAILABLE


async def test_with_tls_on_probes_get_health_alone_on_a_plaintext_port(tiny_triton, redis_server, tmp_path,
                                                                         server_ca, tls_files):
    """Kubernetes' gRPC probes and the image's HEALTHCHECK speak plaintext: HEALTH_PORT serves them the health
    service and nothing else, while the gateway's own port wants TLS."""
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path, tls_cert_file=tls_files["cert"],
                             tls_key_file=tls_files["key"], auth_tokens=json.dumps(TOKENS), health_port=0)
    async with in_process(settings, SMALL_CATALOG) as running:
        probe_target = f"127.0.0.1:{running.gateway.health_port}"
        async with grpc.aio.insecure_channel(probe_target) as probe:
            await wait_for_health(probe, SERVING)
            liveness = await health_pb2_grpc.HealthStub(probe).Check(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
            assert liveness.status == SERVING
            assert await recommend_status(probe) == grpc.StatusCode.UNIMPLEMENTED, "no data on the probe port"
        healthcheck = await asyncio.to_thread(
            subprocess.run, [sys.executable, str(ROOT / "deploy" / "docker" / "healthcheck.py"), probe_target],
            capture_output=True, text=True, timeout=30, check=False)
        assert healthcheck.returncode == 0, healthcheck.stderr
        async with grpc.aio.insecure_channel(running.target) as plaintext:
            assert await recommend_status(plaintext) == grpc.StatusCode.UNAVAILABLE
        await running.gateway.stop(grace_s=0)
        async with grpc.aio.insecure_channel(probe_target) as probe:
            assert await recommend_status(probe) == grpc.StatusCode.UNAVAILABLE, "the probe port closes at the end"


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca(
        tiny_triton, redis_server, tmp_path, server_ca, client_ca, tls_files):
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path, tls_cert_file=tls_files["cert"],
                             tls_key_file=tls_files["key"], tls_client_ca_file=tls_files["client_ca"])
    async with in_process(settings, SMALL_CATALOG) as running:
        for credentials, expected in [(client_credentials(server_ca, client_ca), grpc.StatusCode.OK),
                                      (client_credentials(server_ca), grpc.StatusCode.UNAVAILABLE),
                                      (client_credentials(server_ca, trustme.CA()), grpc.StatusCode.UNAVAILABLE)]:
            async with grpc.aio.secure_channel(running.target, credentials) as channel:
                assert await recommend_status(channel) == expected


async def test_the_client_reaches_a_gateway_with_mutual_tls_and_tokens(tiny_triton, redis_server, tmp_path,
                                                                        server_ca, client_ca, tls_files):
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path, tls_cert_file=tls_files["cert"],
                             tls_key_file=tls_files["key"], tls_client_ca_file=tls_files["client_ca"],
                             auth_tokens=json.dumps(TOKENS))
    client_cert = client_ca.issue_cert("client@recsys.test")
    identity = {"root_certificates": server_ca.cert_pem.bytes(), "private_key": client_cert.private_key_pem.bytes(),
                "certificate_chain": b"".join(blob.bytes() for blob in client_cert.cert_chain_pems)}
    async with in_process(settings, SMALL_CATALOG) as running:
        async with RecsysClient(running.target, token=READER, **identity) as client:
            assert len((await client.recommend(product_id=PRODUCT, limit=2)).items) == 2
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await client.delete_products([PRODUCT])
        async with RecsysClient(running.target, **identity) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
                await anonymous.recommend(product_id=PRODUCT)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("variables, problem", [
    ({"TLS_CERT_FILE": "server.pem"}, "both TLS_CERT_FILE and TLS_KEY_FILE"),
    ({"TLS_KEY_FILE": "server.key"}, "both TLS_CERT_FILE and TLS_KEY_FILE"),
    ({"TLS_CLIENT_CA_FILE": "ca.pem"}, "needs TLS_CERT_FILE"),
])
def test_incomplete_tls_settings_stop_the_start(variables, problem, monkeypatch):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=problem):
        Settings.from_env()


# --- privacy ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def short_lived(tiny_triton, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    """A gateway whose history expires after 1 s."""
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path_factory.mktemp("data"),
                             history_ttl_s=1)
    async with in_process(settings, SMALL_CATALOG) as running:
        yield running


async def test_history_expires_after_its_ttl(short_lived, redis_client: Redis):
    async with grpc.aio.insecure_channel(short_lived.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        await stub.RecordView(pb.RecordViewRequest(user_id="brief-visitor", product_id=PRODUCT), timeout=5)
        key = f"recsys:history:{hashlib.sha256(b'brief-visitor').hexdigest()}"
        assert 0 < await redis_client.pttl(key) <= 1000
        assert (await stub.GetHistory(pb.GetHistoryRequest(user_id="brief-visitor"), timeout=5)).views

        async def expired() -> bool:
            return not (await stub.GetHistory(pb.GetHistoryRequest(user_id="brief-visitor"), timeout=5)).views

        await eventually(expired, 30, "the history's expiry")  # TTL 1 s; Redis expires keys when they are read
        assert not await redis_client.exists(key)


async def everything_in(client: Redis) -> list[bytes]:
    """Every key of the database with every value it holds (lists, strings, hashes, sets)."""
    found = []
    async for key in client.scan_iter(count=1000):
        found.append(key)
        kind = cast(bytes, await client.type(key)).decode()  # bytes without decode_responses; redis types both
        if kind == "list":
            found.extend(await client.lrange(key, 0, -1))
        elif kind == "string":
            found.append(await client.get(key))
        elif kind == "hash":
            found.extend(item for pair in (await client.hgetall(key)).items() for item in pair)
        elif kind in ("set", "zset"):
            found.extend(await client.smembers(key) if kind == "set" else await client.zrange(key, 0, -1))
    return found


async def test_forget_user_leaves_nothing_of_the_user_in_redis(channel, redis_client: Redis):
    user = "forget-me-7f3a"
    digest = hashlib.sha256(user.encode()).hexdigest().encode()
    stub = pb_grpc.RecommenderStub(channel)
    for number in range(3):
        await stub.RecordView(pb.RecordViewRequest(user_id=user, product_id=f"fmnist-train-00000{number}"),
                              metadata=bearer(READER), timeout=5)
    assert any(digest in blob for blob in await everything_in(redis_client))
    await stub.ForgetUser(pb.ForgetUserRequest(user_id=user), metadata=bearer(WRITER), timeout=5)
    assert not [blob for blob in await everything_in(redis_client) if digest in blob or user.encode() in blob]
    history = await stub.GetHistory(pb.GetHistoryRequest(user_id=user), metadata=bearer(READER), timeout=5)
    assert not history.views


async def test_user_ids_never_appear_in_clear_in_logs_metrics_or_the_redis_log(
        tiny_triton, redis_server, tmp_path, caplog):
    user = "private-person-4242"
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.DEBUG)
    for number, redis_url in enumerate((redis_server.url, dead_redis)):
        async with in_process(tiny_settings(tiny_triton.grpc_url, redis_url, tmp_path / str(number)),
                              SMALL_CATALOG) as running:
            async with grpc.aio.insecure_channel(running.target) as channel:
                stub = pb_grpc.RecommenderStub(channel)
                for call in (stub.RecordView(pb.RecordViewRequest(user_id=user, product_id=PRODUCT), timeout=5),
                             stub.RecordView(pb.RecordViewRequest(user_id=user, product_id="unknown"), timeout=5),
                             stub.Recommend(pb.RecommendRequest(user_id=user, product_id=PRODUCT), timeout=5),
                             stub.Recommend(pb.RecommendRequest(user_id=user), timeout=5),
                             stub.GetHistory(pb.GetHistoryRequest(user_id=user), timeout=5)):
                    await status_of(call)
            exposition = generate_latest(running.metrics.registry).decode()
            assert user not in exposition
    assert any("history skipped" in record.getMessage() for record in caplog.records), "the failing path ran"
    assert not [record for record in caplog.records if user in record.getMessage()]
    # The session's redis-server writes its append-only file before it answers (appendfsync always), so the
    # views just recorded are in it, under the user's digest.
    aof = b"".join(path.read_bytes() for path in redis_server.data_dir.rglob("*.aof*") if path.is_file())
    assert hashlib.sha256(user.encode()).hexdigest().encode() in aof and user.encode() not in aof


async def test_the_web_page_calls_a_gateway_that_wants_tokens_with_its_own(authenticated):
    async with aiohttp.ClientSession() as http:
        for token, status, words in ((READER, 200, ""), ("", 401, "WEBUI_TOKEN"), (WRITER, 403, "read")):
            page = await start_webui(authenticated.target, "127.0.0.1", 0, token=token)
            try:
                view = {"user_id": "web", "product_id": PRODUCT}
                async with http.post(f"{page.url}api/views", json=view) as response:
                    assert response.status == status, await response.text()
                    assert words in (await response.json()).get("error", ""), token
            finally:
                await page.stop()
