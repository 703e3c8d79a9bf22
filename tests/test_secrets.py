"""`make deploy-secrets` (ops.secrets): credentials that work with the gateway, kept apart, never world-readable."""

import json
import stat
from pathlib import Path

import grpc
import pytest

from gateway.auth import Authenticator
from gateway.domain import PermissionDenied
from harness.gateway import in_process
from ops.secrets import CONTAINER_READABLE, main, write_secrets
from recsys_client import RecsysClient
from tests.triton_fixtures import tiny_settings

PRODUCT = "fmnist-train-000001"


def tokens_by_scope(folder: Path) -> dict[str, str]:
    return {scopes[0]: token for token, scopes in json.loads((folder / "tokens.json").read_text()).items()}


def test_tokens_have_one_scope_each_and_the_gateway_accepts_them(tmp_path: Path):
    write_secrets(tmp_path)
    tokens = tokens_by_scope(tmp_path)
    assert set(tokens) == {"read", "write"}
    authenticator = Authenticator.from_json((tmp_path / "tokens.json").read_text(), "tokens.json")
    authenticator.check("/recsys.v1.Recommender/Recommend", [("authorization", f"Bearer {tokens['read']}")])
    with pytest.raises(PermissionDenied):
        authenticator.check("/recsys.v1.Catalog/DeleteProducts", [("authorization", f"Bearer {tokens['read']}")])


def test_a_rerun_keeps_live_credentials_and_rotate_replaces_them(tmp_path: Path):
    main(["--k8s", str(tmp_path / "k8s"), "--compose", str(tmp_path / "compose")])
    first = (tmp_path / "k8s" / "tokens.json").read_text()
    assert first != (tmp_path / "compose" / "tokens.json").read_text(), "each deployment gets its own"
    main(["--k8s", str(tmp_path / "k8s"), "--compose", str(tmp_path / "compose")])
    assert (tmp_path / "k8s" / "tokens.json").read_text() == first
    main(["--k8s", str(tmp_path / "k8s"), "--compose", str(tmp_path / "compose"), "--rotate"])
    assert (tmp_path / "k8s" / "tokens.json").read_text() != first


def test_nothing_is_readable_by_other_users(tmp_path: Path):
    write_secrets(tmp_path / "owner-only")
    write_secrets(tmp_path / "for-containers", file_mode=CONTAINER_READABLE)
    for folder in (tmp_path / "owner-only", tmp_path / "for-containers"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, "other users cannot reach the files"
    assert {stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "owner-only").iterdir()} == {0o600}


@pytest.mark.slow
async def test_a_client_that_trusts_the_ca_reaches_the_gateway_with_a_token(tiny_triton, redis_server, tmp_path):
    secrets = tmp_path / "secrets"
    write_secrets(secrets)
    tokens = tokens_by_scope(secrets)
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path / "data",
                             auth_tokens_file=secrets / "tokens.json", tls_cert_file=secrets / "tls.crt",
                             tls_key_file=secrets / "tls.key")
    trust = (secrets / "ca.crt").read_bytes()
    async with in_process(settings, catalog_size=8) as running:
        for host in ("127.0.0.1", "localhost"):  # names the certificate holds
            target = f"{host}:{running.gateway.port}"
            async with RecsysClient(target, token=tokens["read"], root_certificates=trust) as reader:
                assert len((await reader.recommend(product_id=PRODUCT, limit=2)).items) == 2
        async with RecsysClient(running.target, token=tokens["write"], root_certificates=trust) as writer:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await writer.recommend(product_id=PRODUCT)
            assert await writer.delete_products(["never-there"]) == 0
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, "write does not imply read"
