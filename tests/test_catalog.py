"""Congruence tests: the same assertions against the embedded engine and qdrant-client (local mode)."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from qdrant_client import AsyncQdrantClient, models

from gateway.catalog import CatalogStore, EdgeCatalog, QdrantClientCatalog
from gateway.catalog.edge import MODEL_FILE
from gateway.catalog.store import Search, numeric_attributes
from gateway.composition import Components
from gateway.config import Settings
from gateway.domain import (
    EVERY_PRODUCT,
    AttributeRange,
    AttributeValues,
    CatalogItem,
    FailedPrecondition,
    InvalidArgument,
    ModelInfo,
    ProductFilter,
    Unavailable,
)
from gateway.images import ImageLimits
from gateway.indexer import NEIGHBOURS, Indexer
from gateway.metrics import Metrics
from stack.net import free_port

pytestmark = [pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
              pytest.mark.filterwarnings("ignore:Local mode performs exact")]

DIM = 64
MODEL = ModelInfo(name="product_embedder", version="1", backbone="efficientnet_lite0", dim=DIM)
CATEGORIES = ("bags", "boots", "coats", "dresses", "sandals", "shirts")


def clustered_items(count: int, seed: int = 0) -> list[CatalogItem]:
    """Unit vectors around one centre per category, like embeddings of product photos."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CATEGORIES), DIM))
    items = []
    for index in range(count):
        cluster = index % len(CATEGORIES)
        vector = centres[cluster] + 0.6 * rng.normal(size=DIM)
        items.append(
            CatalogItem(
                product_id=f"sku-{index:05d}",
                category=CATEGORIES[cluster],
                vector=(vector / np.linalg.norm(vector)).astype(np.float32),
                attributes={"colour": ("black", "red", "blue")[index % 3], "size": str(36 + index % 8),
                            "price": "n/a" if index % 7 == 0 else f"{index % 50}.5",
                            "size.eu": str(36 + index % 5)},
            )
        )
    return items


ITEMS = clustered_items(240)
QUERIES = [
    item.vector + 0.3 * np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    for seed, item in enumerate(ITEMS[:6])
]

FILTERS = [
    (EVERY_PRODUCT, ()),
    (ProductFilter(("boots", "coats")), ()),
    (EVERY_PRODUCT, ("sku-00000", "sku-00006")),
    (ProductFilter(attributes=(AttributeValues("colour", ("red", "blue")), AttributeValues("size.eu", ("38",)))), ()),
    (ProductFilter(("bags",), ranges=(AttributeRange("price", 10.0, 30.5),)), ()),
    (ProductFilter(ranges=(AttributeRange("price", maximum=20.0), AttributeRange("size", minimum=40))), ("sku-00001",)),
    (ProductFilter(excluded_categories=("boots", "bags"), excluded_attributes=(AttributeValues("colour", ("red",)),)),
     ("sku-00002",)),
]


def passes(item: CatalogItem, where: ProductFilter) -> bool:
    """Whether a filter keeps an item, by its definition: a category among its categories, every attribute value
    condition met, every numeric range met by the attribute read as a number, no excluded category or value."""
    numbers = numeric_attributes(item.attributes)
    return ((not where.categories or item.category in where.categories)
            and item.category not in where.excluded_categories
            and not any(item.attributes.get(each.name) in each.values for each in where.excluded_attributes)
            and all(item.attributes.get(each.name) in each.values for each in where.attributes)
            and all(each.name in numbers
                    and (each.minimum is None or numbers[each.name] >= each.minimum)
                    and (each.maximum is None or numbers[each.name] <= each.maximum) for each in where.ranges))


def exact_ranking(
    items: Sequence[CatalogItem],
    query: np.ndarray,
    limit: int,
    where: ProductFilter = EVERY_PRODUCT,
    exclude_ids: Sequence[str] = (),
) -> list[tuple[str, float]]:
    """(product id, cosine similarity) of the best `limit` items, by brute force."""
    kept = [item for item in items if passes(item, where)]
    kept = [item for item in kept if item.product_id not in exclude_ids]
    vectors = np.stack([item.vector / np.linalg.norm(item.vector) for item in kept])
    scores = vectors @ (query / np.linalg.norm(query))
    order = np.argsort(-scores)[:limit]
    return [(kept[i].product_id, float(scores[i])) for i in order]


async def ranking(
    store: CatalogStore,
    query: np.ndarray,
    limit: int,
    where: ProductFilter = EVERY_PRODUCT,
    exclude_ids: Sequence[str] = (),
) -> list[tuple[str, float]]:
    hits = await store.search(query, limit, where, exclude_ids=exclude_ids)
    return [(hit.item.product_id, hit.score) for hit in hits]


def assert_same_ranking(actual: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [product_id for product_id, _ in actual] == [product_id for product_id, _ in expected]
    np.testing.assert_allclose([s for _, s in actual], [s for _, s in expected], atol=1e-5)


def new_store(backend: str, path: Path) -> CatalogStore:
    """A store of `backend` keeping its data under `path` (client: qdrant-client's local mode)."""
    if backend == "edge":
        return EdgeCatalog(path)
    return QdrantClientCatalog(AsyncQdrantClient(path=str(path / "local")))


async def opened(store: CatalogStore, items: Sequence[CatalogItem] = ITEMS) -> CatalogStore:
    await store.open(MODEL)
    await store.upsert(items)
    return store


def fast_store(backend: str, path: Path) -> CatalogStore:
    """A store of `backend`; the client one in memory, where qdrant-client's local mode is much faster."""
    if backend == "edge":
        return EdgeCatalog(path)
    return QdrantClientCatalog(AsyncQdrantClient(location=":memory:"))


@pytest.fixture(scope="module", params=["edge", "client"])
async def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[CatalogStore]:
    """Each backend with ITEMS in it, shared by the tests that do not write."""
    catalog = await opened(fast_store(request.param, tmp_path_factory.mktemp(request.param)))
    yield catalog
    await catalog.close()


@pytest.fixture(params=["edge", "client"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CatalogStore]:
    """Each backend with ITEMS in it, for one test that writes."""
    catalog = await opened(fast_store(request.param, tmp_path))
    yield catalog
    await catalog.close()


async def test_search_ranks_by_cosine_similarity_with_items_and_no_vectors(loaded: CatalogStore) -> None:
    by_id = {item.product_id: item for item in ITEMS}
    for query in QUERIES:
        hits = await loaded.search(query, 10)
        found = [(hit.item.product_id, hit.score) for hit in hits]
        assert_same_ranking(found, exact_ranking(ITEMS, query, 10))
        for hit in hits:
            stored = by_id[hit.item.product_id]
            assert hit.item.category == stored.category
            assert hit.item.attributes == stored.attributes
            assert hit.item.vector.size == 0


async def test_similarities_are_the_cosine_of_each_stored_product_asked_for(loaded: CatalogStore) -> None:
    wanted = [[ITEMS[3].product_id, ITEMS[200].product_id, "sku-never-added", ITEMS[3].product_id],
              [ITEMS[7].product_id], []]
    queries = list(zip(QUERIES[:3], wanted, strict=True))
    answers = await loaded.similarities(queries)
    assert len(answers) == len(queries)
    for (query, _), stored, found in zip(queries, [[ITEMS[3], ITEMS[200]], [ITEMS[7]], []], answers, strict=True):
        expected = dict(exact_ranking(stored, query, len(stored))) if stored else {}
        assert sorted(found) == sorted(expected)
        np.testing.assert_allclose([found[pid] for pid in expected], list(expected.values()), atol=1e-5)
    assert await loaded.similarities([(QUERIES[0], []), (QUERIES[1], [])]) == [{}, {}]
    assert await loaded.similarities([]) == []


async def test_backends_return_the_same_neighbours(tmp_path: Path) -> None:
    edge = await opened(EdgeCatalog(tmp_path))
    client = await opened(QdrantClientCatalog(AsyncQdrantClient(location=":memory:")))
    try:
        for query in QUERIES:
            for where, exclude_ids in FILTERS:
                expected = exact_ranking(ITEMS, query, 15, where, exclude_ids)
                assert_same_ranking(await ranking(edge, query, 15, where, exclude_ids), expected)
                assert_same_ranking(await ranking(client, query, 15, where, exclude_ids), expected)
    finally:
        await edge.close()
        await client.close()


async def test_upsert_is_idempotent_and_the_latest_write_wins(store: CatalogStore) -> None:
    await store.upsert(ITEMS[:10])
    moved = replace(ITEMS[0], category="coats", vector=ITEMS[1].vector, attributes={"colour": "green"})
    await store.upsert([moved])
    assert await store.count() == len(ITEMS)
    stored = (await store.retrieve([moved.product_id]))[moved.product_id]
    assert (stored.category, dict(stored.attributes)) == ("coats", {"colour": "green"})
    np.testing.assert_allclose(stored.vector, ITEMS[1].vector, atol=1e-6)


async def test_category_filter_keeps_only_those_categories(loaded: CatalogStore) -> None:
    where = ProductFilter(("boots", "sandals"))
    hits = await loaded.search(QUERIES[0], 20, where)
    assert {hit.item.category for hit in hits} == set(where.categories)
    expected = exact_ranking(ITEMS, QUERIES[0], 20, where)
    assert_same_ranking([(hit.item.product_id, hit.score) for hit in hits], expected)


async def test_excluded_products_are_never_returned(loaded: CatalogStore) -> None:
    nearest = [product_id for product_id, _ in await ranking(loaded, QUERIES[2], 5)]
    remaining = await ranking(loaded, QUERIES[2], 5, exclude_ids=nearest[:3])
    assert not set(nearest[:3]) & {product_id for product_id, _ in remaining}
    assert_same_ranking(remaining, exact_ranking(ITEMS, QUERIES[2], 5, exclude_ids=nearest[:3]))


async def test_delete_counts_existing_products_and_removes_them(store: CatalogStore) -> None:
    nearest = [product_id for product_id, _ in await ranking(store, QUERIES[3], 3)]
    assert await store.delete([*nearest, nearest[0], "sku-never-added"]) == 3
    assert await store.count() == len(ITEMS) - 3
    assert not set(nearest) & {product_id for product_id, _ in await ranking(store, QUERIES[3], 20)}
    assert await store.retrieve(nearest) == {}
    assert await store.delete(nearest) == 0


async def test_thumbnails_are_kept_apart_from_what_searches_read(store: CatalogStore) -> None:
    pictured = replace(ITEMS[0], thumbnail=b"\xff\xd8 a JPEG's bytes \x00\xff")
    await store.upsert([pictured, ITEMS[1]])
    assert await store.thumbnail(pictured.product_id) == pictured.thumbnail
    assert await store.thumbnail(ITEMS[1].product_id) == b""
    assert await store.thumbnail("sku-never-added") is None
    hits = await store.search(pictured.vector, 2)
    found = await store.retrieve([pictured.product_id])
    assert [hit.item.thumbnail for hit in hits] == [b"", b""] and found[pictured.product_id].thumbnail == b""


async def test_retrieve_returns_stored_items_and_omits_missing_ones(loaded: CatalogStore) -> None:
    wanted = [ITEMS[5].product_id, ITEMS[7].product_id, "sku-never-added"]
    found = await loaded.retrieve(wanted)
    assert sorted(found) == wanted[:2]
    for item in (ITEMS[5], ITEMS[7]):
        assert (found[item.product_id].category, dict(found[item.product_id].attributes)) == (
            item.category,
            dict(item.attributes),
        )
        np.testing.assert_allclose(found[item.product_id].vector, item.vector, atol=1e-6)
    without_vectors = await loaded.retrieve(wanted, with_vectors=False)
    assert sorted(without_vectors) == wanted[:2]
    assert all(item.vector.size == 0 for item in without_vectors.values())


INVALID_CALLS: dict[str, Callable[[CatalogStore], Awaitable[object]]] = {
    "query of another dimension": lambda store: store.search(np.ones(DIM + 1, dtype=np.float32), 5),
    "zero query": lambda store: store.search(np.zeros(DIM, dtype=np.float32), 5),
    "NaN in query": lambda store: store.search(np.full(DIM, np.nan, dtype=np.float32), 5),
    "limit 0": lambda store: store.search(ITEMS[0].vector, 0),
    "similarities to a query of another dimension":
        lambda store: store.similarities([(ITEMS[0].vector, ["sku-00001"]), (np.ones(DIM + 1), ["sku-00001"])]),
    "item of another dimension": lambda store: store.upsert([replace(ITEMS[0], vector=np.ones(DIM // 2))]),
    "empty product id": lambda store: store.upsert([replace(ITEMS[0], product_id="")]),
}


@pytest.mark.parametrize("call", INVALID_CALLS.values(), ids=INVALID_CALLS.keys())
async def test_invalid_input_is_rejected_and_changes_nothing(
    loaded: CatalogStore, call: Callable[[CatalogStore], Awaitable[object]]
) -> None:
    with pytest.raises(InvalidArgument):
        await call(loaded)
    assert await loaded.count() == len(ITEMS)
    assert (await loaded.retrieve([ITEMS[0].product_id]))[ITEMS[0].product_id].category == ITEMS[0].category


@pytest.mark.parametrize("backend", ["edge", "client"])
async def test_reopening_keeps_points_and_the_recorded_model(backend: str, tmp_path: Path) -> None:
    first = await opened(new_store(backend, tmp_path), ITEMS[:60])
    before = await ranking(first, QUERIES[0], 10)
    await first.close()
    second = new_store(backend, tmp_path)
    await second.open(MODEL)
    try:
        assert await second.count() == 60
        assert_same_ranking(await ranking(second, QUERIES[0], 10), before)
    finally:
        await second.close()


@pytest.mark.parametrize("backend", ["edge", "client"])
@pytest.mark.parametrize(
    "other_model",
    [replace(MODEL, version="2"), replace(MODEL, backbone="resnet50", dim=2048)],
    ids=["other version", "other backbone"],
)
async def test_a_catalog_built_with_another_model_is_refused(
    backend: str, other_model: ModelInfo, tmp_path: Path
) -> None:
    await (await opened(new_store(backend, tmp_path), ITEMS[:5])).close()
    refused = new_store(backend, tmp_path)
    with pytest.raises(FailedPrecondition) as raised:
        await refused.open(other_model)
    await refused.close()
    message = str(raised.value)
    assert str(MODEL) in message and str(other_model) in message
    assert "make index RECREATE=1" in message


async def test_edge_shard_without_model_record_is_refused(tmp_path: Path) -> None:
    await (await opened(EdgeCatalog(tmp_path), ITEMS[:5])).close()
    (tmp_path / "products" / MODEL_FILE).unlink()
    refused = EdgeCatalog(tmp_path)
    with pytest.raises(FailedPrecondition, match="unknown embedding model"):
        await refused.open(MODEL)
    await refused.close()


async def test_client_collection_without_model_record_is_refused() -> None:
    client = AsyncQdrantClient(location=":memory:")
    await client.create_collection("products", models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    catalog = QdrantClientCatalog(client)
    with pytest.raises(FailedPrecondition, match="unknown embedding model"):
        await catalog.open(MODEL)
    await catalog.close()


async def test_edge_search_above_the_exact_threshold_uses_hnsw_and_finds_the_nearest(tmp_path: Path) -> None:
    items = clustered_items(1500, seed=1)
    catalog = EdgeCatalog(tmp_path, exact_search_max_points=300)
    await catalog.open(MODEL)
    try:
        await catalog.upsert(items)
        assert await catalog.optimize()  # the HNSW index is built
        found = total = 0
        for index, item in enumerate(items[:20]):
            query = item.vector + 0.3 * np.random.default_rng(index).normal(size=DIM).astype(np.float32)
            where = ProductFilter((item.category,)) if index % 2 else EVERY_PRODUCT
            expected = {product_id for product_id, _ in exact_ranking(items, query, 10, where)}
            hits = await catalog.search(query, 10, where)
            found += len(expected & {hit.item.product_id for hit in hits})
            total += len(expected)
        assert found / total >= 0.95
    finally:
        await catalog.close()


async def test_edge_optimize_builds_no_index_below_the_exact_threshold(tmp_path: Path) -> None:
    catalog = await opened(EdgeCatalog(tmp_path, exact_search_max_points=2 * len(ITEMS)))
    try:
        assert not await catalog.optimize()
    finally:
        await catalog.close()


async def test_edge_ping_answers_while_open_only(tmp_path: Path) -> None:
    catalog = EdgeCatalog(tmp_path)
    with pytest.raises(Unavailable, match="not open"):
        await catalog.ping()
    await catalog.open(MODEL)
    await catalog.ping()
    await catalog.close()
    with pytest.raises(Unavailable, match="closed"):
        await catalog.ping()


async def test_an_edge_shard_opens_in_one_store_at_a_time(tmp_path: Path) -> None:
    first = await opened(EdgeCatalog(tmp_path), ITEMS[:3])
    second = EdgeCatalog(tmp_path)
    try:
        with pytest.raises(Unavailable, match="one process at a time"):
            await second.open(MODEL)
    finally:
        await second.close()
        await first.close()


def catalog_store(tmp_path: Path, url: str | None, collection: str = "products",
                  timeout_s: float = 1.0) -> CatalogStore:
    return Components(Settings(qdrant_url=url, data_dir=tmp_path, search_timeout_s=timeout_s)).catalog_store(collection)


async def test_without_a_url_the_catalog_is_embedded_under_the_data_directory(tmp_path: Path) -> None:
    catalog = catalog_store(tmp_path, None, "catalog")
    await opened(catalog, ITEMS[:3])
    await catalog.close()
    assert (tmp_path / "qdrant" / "catalog" / MODEL_FILE).is_file()


@pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning")
async def test_a_refused_qdrant_url_is_unavailable_at_once(tmp_path: Path) -> None:
    timeout_s = 10.0
    catalog = catalog_store(tmp_path, f"http://127.0.0.1:{free_port()}", timeout_s=timeout_s)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="QDRANT_URL"):
        await catalog.ping()
    with pytest.raises(Unavailable, match="QDRANT_URL"):
        await catalog.open(MODEL)
    assert time.monotonic() - started < timeout_s, "a refused connection does not wait out the timeout"
    await catalog.close()


@pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning")
async def test_a_qdrant_url_that_never_answers_times_out_as_unavailable(tmp_path: Path) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    timeout_s = 1.0
    catalog = catalog_store(tmp_path, f"http://127.0.0.1:{port}", timeout_s=timeout_s)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable, match="Timeout"):
            await catalog.ping()
        assert time.monotonic() - started < timeout_s + 10, "the timeout ends the wait"
    finally:
        await catalog.close()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_batch_search_answers_each_search_under_its_own_limit_and_filter(loaded: CatalogStore) -> None:
    excluded = (ITEMS[0].product_id, ITEMS[7].product_id)
    where = ProductFilter(("bags", "boots"))
    searches = [Search(QUERIES[0], 8, where, excluded), Search(QUERIES[1], 3), Search(QUERIES[2], 8, where, excluded),
                Search(QUERIES[3], 5, ProductFilter(ranges=(AttributeRange("price", minimum=30),)))]
    batch = await loaded.search_batch(searches)
    assert len(batch) == len(searches)
    for search, hits in zip(searches, batch, strict=True):
        assert_same_ranking([(hit.item.product_id, hit.score) for hit in hits],
                            exact_ranking(ITEMS, search.vector, search.limit, search.where, search.exclude_ids))
    assert await loaded.search_batch([]) == []
    with pytest.raises(InvalidArgument, match="limit must be at least 1"):
        await loaded.search_batch([Search(QUERIES[0], 8), Search(QUERIES[1], 0)])


async def test_neighbour_similarities_are_set_read_back_and_skip_unknown_products(store: CatalogStore) -> None:
    indexer = Indexer(EmbedderNotUsed(), store, ThreadPoolExecutor(1), ImageLimits(), Metrics(CollectorRegistry()))
    ids = [item.product_id for item in ITEMS[:20]]
    await indexer.set_neighbourhoods([*ids, "sku-never-added"])
    stored = await store.retrieve(ids)
    for product_id in ids:
        others = [item for item in ITEMS if item.product_id != product_id]
        expected = np.mean([score for _, score in exact_ranking(others, stored[product_id].vector, NEIGHBOURS)])
        assert stored[product_id].neighbour_similarity == pytest.approx(expected, abs=1e-5)
    [hit] = await store.search(ITEMS[0].vector, 1)
    assert hit.item.neighbour_similarity == stored[ITEMS[0].product_id].neighbour_similarity
    assert (await store.retrieve([ITEMS[30].product_id]))[ITEMS[30].product_id].neighbour_similarity == 0.0
    assert await store.retrieve(["sku-never-added"]) == {}


class EmbedderNotUsed:
    """Setting neighbour similarities reads the catalog only."""

    info = MODEL
    decodes = False

    async def embed(self, images: np.ndarray, timeout_s: float) -> np.ndarray:
        raise AssertionError("not used")

    async def embed_encoded(self, data: bytes, limits: ImageLimits, timeout_s: float) -> np.ndarray:
        raise AssertionError("not used")

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def test_only_finite_decimal_attributes_are_stored_as_numbers() -> None:
    attributes = {"price": "19.99", "delta": "-3", "big": "1e3", "half": ".5", "sku": "n/a", "not a number": "nan",
                  "endless": "inf", "grouped": "1_000", "padded": " 5", "hex": "0x10", "empty": ""}
    assert numeric_attributes(attributes) == {"price": 19.99, "delta": -3.0, "big": 1000.0, "half": 0.5}
