"""Versioned rollout: catalog aliases, the gateway following them, the rollout/rollback commands, and a
local tritonserver loading a version exported while it runs."""

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image
from qdrant_client import AsyncQdrantClient
from tritonclient.grpc import InferenceServerClient

from catalog_sources import products as sources
from catalog_sources.fashion_mnist import load_split
from gateway.catalog import CatalogAliases, CatalogStore, EdgeAliases, EdgeCatalog, QdrantClientCatalog
from gateway.catalog.aliases import ServerAliases, versioned_collection
from gateway.composition import Components
from gateway.config import Settings
from gateway.domain import ModelInfo
from gateway.serving import follow_alias, serving_target
from harness.gateway import in_process
from harness.health import eventually
from model_export.triton_config import render_config
from ops.index import Source
from ops.rollout import previous_collection, roll_back, roll_out
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from stack.triton import TritonServer, add_new_versions, derive_local_repository
from tests.model_versions import MODEL_NAME, export_stand_in, two_version_repository
from tests.triton_fixtures import MODEL_REPOSITORY, start_triton, with_versions

pytestmark = [pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
              pytest.mark.filterwarnings("ignore:Local mode performs exact")]

CATALOG_SIZE = 40
QUERY_PRODUCT = 3
SWITCH_TIMEOUT_S = 60.0  # the alias is polled every 0.2 s here; the bound only keeps a broken switch from hanging


def model(version: str) -> ModelInfo:
    return ModelInfo(MODEL_NAME, version, "efficientnet_lite0", 8)


@pytest.fixture(params=["edge", "client"])
async def aliases(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[CatalogAliases, object]]:
    """Each backend's aliases, with collections products-v1 and products-v2 built with those versions."""
    if request.param == "edge":
        found: CatalogAliases = EdgeAliases(tmp_path)
        stores: list[CatalogStore] = [EdgeCatalog(tmp_path, versioned_collection("products", v)) for v in ("1", "2")]
    else:
        client = AsyncQdrantClient(location=":memory:")
        found = ServerAliases(client)
        stores = [QdrantClientCatalog(client, versioned_collection("products", v)) for v in ("1", "2")]
    for store, version in zip(stores, ("1", "2")):
        await store.open(model(version))
    yield found, request.param
    for store in stores:
        if request.param == "edge":
            await store.close()
    await found.close()


async def test_an_alias_is_created_moved_and_names_the_model_of_its_collection(aliases) -> None:
    store, _ = aliases
    assert await store.target("products") is None
    await store.point("products", "products-v1")
    assert await store.target("products") == "products-v1"
    await store.point("products", "products-v2")
    assert await store.target("products") == "products-v2"
    assert await store.built_with("products-v2") == model("2")
    assert await store.built_with("products-v9") is None


async def test_the_serving_target_follows_the_alias_else_a_plain_collection_else_a_new_one(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, model_version="")
    aliases = EdgeAliases(tmp_path / "qdrant")
    assert await serving_target(aliases, settings) == (None, "")
    plain = EdgeCatalog(tmp_path / "qdrant", "products")
    await plain.open(model("1"))
    await plain.close()
    assert await serving_target(aliases, settings) == ("products", "")
    for version in ("1", "2"):
        store = EdgeCatalog(tmp_path / "qdrant", versioned_collection("products", version))
        await store.open(model(version))
        await store.close()
    await aliases.point("products", "products-v2")
    assert await serving_target(aliases, settings) == ("products-v2", "2")
    assert await serving_target(aliases, settings, recreate=True) == (None, "")
    assert await previous_collection(aliases, "products", None) == "products-v1"
    assert await previous_collection(aliases, "products", "1") == "products-v1"
    with pytest.raises(SystemExit, match="no collection of model version 7"):
        await previous_collection(aliases, "products", "7")


def test_new_versions_are_derived_whole_and_once(tmp_path: Path) -> None:
    production = tmp_path / "production"
    (production / MODEL_NAME / "1").mkdir(parents=True)
    (production / MODEL_NAME / "1" / "model.pt").write_bytes(b"v1")
    (production / MODEL_NAME / "config.pbtxt").write_text('platform: "pytorch_libtorch"\n')
    derive_local_repository(production, tmp_path / "local")
    (production / MODEL_NAME / "2").mkdir()
    assert add_new_versions(production, tmp_path / "local") == []  # no model.pt yet
    (production / MODEL_NAME / "2" / "model.pt").write_bytes(b"v2")
    assert add_new_versions(production, tmp_path / "local") == [tmp_path / "local" / MODEL_NAME / "2"]
    assert (tmp_path / "local" / MODEL_NAME / "2" / "model.pt").read_bytes() == b"v2"
    assert (tmp_path / "local" / MODEL_NAME / "2" / "model.py").exists()
    assert add_new_versions(production, tmp_path / "local") == []


@pytest.mark.slow
def test_a_polling_tritonserver_loads_a_version_exported_while_it_runs_and_keeps_the_old_one(tmp_path: Path) -> None:
    repository = with_versions(MODEL_REPOSITORY, tmp_path / "repository", ("1",))
    (repository / MODEL_NAME / "config.pbtxt").unlink()
    (repository / MODEL_NAME / "config.pbtxt").write_text(render_config(MODEL_NAME, "efficientnet_lite0", 1280))
    with TritonServer(repository, poll_s=1) as server:
        client = InferenceServerClient(server.grpc_url)
        assert client.is_model_ready(MODEL_NAME, "1") and not client.is_model_ready(MODEL_NAME, "2")
        export_stand_in(repository, 2)
        deadline = time.monotonic() + 120
        while not client.is_model_ready(MODEL_NAME, "2") and time.monotonic() < deadline:
            assert client.is_model_ready(MODEL_NAME, "1")
            time.sleep(0.5)  # the server polls its repository every second
        assert client.is_model_ready(MODEL_NAME, "2")
        assert client.is_model_ready(MODEL_NAME, "1")
        client.close()


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """tritonserver over version 1 and the stand-in version 2."""
    server = start_triton(two_version_repository(tmp_path_factory.mktemp("two_versions")))
    yield server
    server.stop()


def catalog_source() -> Source:
    return sources.fashion_mnist("train", limit=CATALOG_SIZE)


def png_of_catalog_product(index: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(load_split("train").images[index], mode="L").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.slow
async def test_rollout_and_rollback_switch_the_served_version_without_a_failed_or_mixed_request(
        two_versions: TritonServer, redis_server, tmp_path: Path) -> None:
    # Generous deadlines: the rollout's bulk embedding shares Triton and the cores with the requests, and this
    # test is about which version answers, not how fast.
    settings = Settings(triton_url=two_versions.grpc_url, redis_url=redis_server.url, data_dir=tmp_path,
                        embed_timeout_s=60.0, request_timeout_s=60.0)
    assert await roll_out(settings, "1", catalog_source(), batch_size=16) == "products-v1"
    query = png_of_catalog_product(QUERY_PRODUCT)
    answers: list[pb.RecommendResponse] = []  # one shopper, request after request: in the order served
    async with in_process(settings, grace_s=1) as running, \
            follow_alias(running.gateway.serving, Components(settings), poll_s=0.2), \
            grpc.aio.insecure_channel(running.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        stop = asyncio.Event()

        async def shopper() -> None:
            while not stop.is_set():
                answers.append(await stub.Recommend(pb.RecommendRequest(image=query, limit=3), timeout=60))

        def answered_by(version: str) -> bool:
            return bool(answers) and answers[-1].model.startswith(f"{MODEL_NAME}/{version} ")

        browsing = asyncio.create_task(shopper())
        await eventually(lambda: answered_by("1"), SWITCH_TIMEOUT_S, "an answer of version 1")
        assert await roll_out(settings, "2", catalog_source(), batch_size=16) == "products-v2"
        await eventually(lambda: answered_by("2"), SWITCH_TIMEOUT_S, "the switch to version 2")
        assert await roll_back(settings, None) == "products-v1"
        await eventually(lambda: answered_by("1"), SWITCH_TIMEOUT_S, "the switch back to version 1")
        stop.set()
        await browsing
    versions = [answer.model.split(" ")[0] for answer in answers]
    switches = [index for index in range(1, len(versions)) if versions[index] != versions[index - 1]]
    assert [versions[0], *(versions[index] for index in switches)] == [
        f"{MODEL_NAME}/1", f"{MODEL_NAME}/2", f"{MODEL_NAME}/1"], "two switches, no back and forth"
    own_id = f"fmnist-train-{QUERY_PRODUCT:06d}"
    for answer in answers:  # a query embedded by one version and searched among another's vectors misses itself
        assert answer.items[0].product_id == own_id
        assert answer.items[0].visual_score == pytest.approx(1.0, abs=1e-3)
