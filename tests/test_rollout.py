"""Versioned rollout: catalog aliases, the gateway following them, the rollout/rollback commands, and a
local tritonserver loading a version exported while it runs."""

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image
from qdrant_client import AsyncQdrantClient
from tritonclient.grpc import InferenceServerClient
from tritonclient.grpc.aio import InferenceServerClient as AsyncInferenceServerClient

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
from ops.index import Source
from ops.model_versions import addresses, load_version, served_versions, unload_version
from ops.rollout import previous_collection, roll_back, roll_out
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from stack.triton import TritonServer, add_new_versions, derive_local_repository
from tests.model_versions import MODEL_NAME, export_stand_in, two_version_repository, version_1_repository
from tests.triton_fixtures import start_triton

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
    repository = version_1_repository(tmp_path / "repository")
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


def patient_settings(triton_url: str, redis_url: str, data_dir: Path) -> Settings:
    """Generous deadlines: a rollout's bulk embedding and Triton loading versions share the cores with the
    requests, and these tests are about which version answers, not how fast."""
    return Settings(triton_url=triton_url, redis_url=redis_url, data_dir=data_dir, embed_timeout_s=60.0,
                    request_timeout_s=60.0)


@contextlib.asynccontextmanager
async def shopper_of(settings: Settings) -> AsyncIterator[list[pb.RecommendResponse]]:
    """A gateway following the catalog alias, and one shopper sending it the same image query request after
    request until the block ends; yields the answers in the order served. A failed request fails the block."""
    query = png_of_catalog_product(QUERY_PRODUCT)
    answers: list[pb.RecommendResponse] = []
    async with in_process(settings, grace_s=1) as running, \
            follow_alias(running.gateway.serving, Components(settings), poll_s=0.2), \
            grpc.aio.insecure_channel(running.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        stop = asyncio.Event()

        async def shopper() -> None:
            while not stop.is_set():
                answers.append(await stub.Recommend(pb.RecommendRequest(image=query, limit=3), timeout=60))

        browsing = asyncio.create_task(shopper())
        try:
            yield answers
        finally:
            stop.set()
            await browsing


def answered_by(answers: list[pb.RecommendResponse], version: str) -> bool:
    """Whether the latest answer came from model ``version``."""
    return bool(answers) and answers[-1].model.startswith(f"{MODEL_NAME}/{version} ")


def assert_served_in_turn(answers: list[pb.RecommendResponse], versions: list[str]) -> None:
    """The answers came from ``versions`` in that order, each switch once, every answer from one version alone."""
    served = [answer.model.split(" ")[0] for answer in answers]
    switches = [index for index in range(1, len(served)) if served[index] != served[index - 1]]
    assert [served[0], *(served[index] for index in switches)] == [f"{MODEL_NAME}/{v}" for v in versions], \
        "no back and forth"
    own_id = f"fmnist-train-{QUERY_PRODUCT:06d}"
    for answer in answers:  # a query embedded by one version and searched among another's vectors misses itself
        assert answer.items[0].product_id == own_id
        assert answer.items[0].visual_score == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
async def test_rollout_and_rollback_switch_the_served_version_without_a_failed_or_mixed_request(
        two_versions: TritonServer, redis_server, tmp_path: Path) -> None:
    settings = patient_settings(two_versions.grpc_url, redis_server.url, tmp_path)
    assert await roll_out(settings, "1", catalog_source(), batch_size=16) == "products-v1"
    async with shopper_of(settings) as answers:
        await eventually(lambda: answered_by(answers, "1"), SWITCH_TIMEOUT_S, "an answer of version 1")
        assert await roll_out(settings, "2", catalog_source(), batch_size=16) == "products-v2"
        await eventually(lambda: answered_by(answers, "2"), SWITCH_TIMEOUT_S, "the switch to version 2")
        assert await roll_back(settings, None) == "products-v1"
        await eventually(lambda: answered_by(answers, "1"), SWITCH_TIMEOUT_S, "the switch back to version 1")
    assert_served_in_turn(answers, ["1", "2", "1"])


async def test_the_version_commands_ask_every_address_of_the_triton_host_and_need_one() -> None:
    assert await addresses("localhost:8001") == ["127.0.0.1:8001"]
    with pytest.raises(SystemExit, match="set TRITON_URL"):
        await load_version(Settings(triton_url=""), "2")


async def served(triton: TritonServer) -> list[str]:
    """The versions of the model the server has loaded and ready."""
    async with AsyncInferenceServerClient(triton.grpc_url) as client:
        return await served_versions(client, MODEL_NAME)


@pytest.mark.slow
async def test_the_cluster_procedure_in_explicit_mode_loads_rolls_out_and_unloads_with_every_request_answered(
        redis_server, tmp_path: Path) -> None:
    """Version 2 is loaded through the repository API, the catalog rolled out to it, version 1 unloaded: no
    request fails or mixes versions, and version 2 answers from the switch to the end."""
    repository = version_1_repository(tmp_path / "repository")
    with TritonServer(repository, poll_s=1, explicit=True) as triton:
        settings = patient_settings(triton.grpc_url, redis_server.url, tmp_path / "data")
        assert await roll_out(settings, "1", catalog_source(), batch_size=16) == "products-v1"
        async with shopper_of(settings) as answers:
            await eventually(lambda: answered_by(answers, "1"), SWITCH_TIMEOUT_S, "an answer of version 1")
            await asyncio.to_thread(export_stand_in, repository, 2)
            await eventually((triton.local_repository / MODEL_NAME / "2").exists, SWITCH_TIMEOUT_S,
                             "version 2 in the served repository")
            assert await served(triton) == ["1"], "explicit mode: nothing loads by itself"
            assert list((await load_version(settings, "2")).values()) == [["1", "2"]]
            assert await roll_out(settings, "2", catalog_source(), batch_size=16) == "products-v2"
            await eventually(lambda: answered_by(answers, "2"), SWITCH_TIMEOUT_S, "the switch to version 2")
            with pytest.raises(SystemExit, match="serves model version 2"):
                await unload_version(settings, "2")
            assert list((await unload_version(settings, "1")).values()) == [["2"]]
            unloaded_at = len(answers)
            await eventually(lambda: len(answers) >= unloaded_at + 3, SWITCH_TIMEOUT_S,
                             "answers after version 1 was unloaded")
        assert await served(triton) == ["2"]
    assert_served_in_turn(answers, ["1", "2"])

