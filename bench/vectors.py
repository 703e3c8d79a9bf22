"""Layer 4: vector search on the embedded Qdrant engine, with the settings the gateway ships."""

import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, Query, QueryRequest, SearchParams

from bench.workload import catalog_chunks, perturbed_embeddings
from gateway.catalog import EdgeCatalog
from gateway.catalog.edge import DEFAULT_HNSW_EF
from gateway.catalog.store import EXACT_SEARCH_MAX_POINTS, CatalogStore
from gateway.composition import QDRANT_SUBDIR, Components
from gateway.domain import CatalogItem, ModelInfo
from harness.load import Latency, summarize

COLLECTION = "products"
UPSERT_CHUNK = 1000
K = 10
MiB = 1024 * 1024


def product_id(index: int) -> str:
    """The id of generated catalog product `index`."""
    return f"bench-{index:07d}"


def _index_of(product: str) -> int:
    return int(product.removeprefix("bench-"))


def rss_mib() -> float:
    """Resident memory of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS missing from /proc/self/status")


def _disk_mib(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / MiB


@dataclass(frozen=True)
class VectorReport:
    points: int
    dim: int
    search_mode: str
    hnsw_ef: int
    exact_search_max_points: int
    upsert_points_per_s: float
    index_build_s: float
    search: Latency
    recall_at_10: float
    pool_size: int
    pool_search: Latency
    engine_search: Latency
    exact_search: Latency
    rss_mib_per_million: float
    disk_mib_per_million: float


def _merge_top(best: tuple[np.ndarray, np.ndarray], scores: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Running exact top-K (scores, indices) per query, merged with one chunk's scores [queries, chunk]."""
    all_scores = np.concatenate([best[0], scores], axis=1)
    all_indices = np.concatenate([best[1], np.arange(offset, offset + scores.shape[1])[None].repeat(len(scores), 0)],
                                 axis=1)
    top = np.argsort(-all_scores, axis=1)[:, :K]
    return np.take_along_axis(all_scores, top, 1), np.take_along_axis(all_indices, top, 1)


async def build_catalog(components: Components, model: ModelInfo, seeds: np.ndarray, categories: Sequence[str],
                        points: int, queries: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Fills a fresh catalog with `points` generated products and builds its index, as `make index` does.

    Returns (upsert points/s, index build seconds, exact top-K product indices of each query).
    """
    shutil.rmtree(components.settings.data_dir / QDRANT_SUBDIR / COLLECTION, ignore_errors=True)
    catalog = components.catalog_store(COLLECTION)
    best = (np.full((len(queries), 0), -np.inf, dtype=np.float32), np.zeros((len(queries), 0), dtype=np.int64))
    upsert_s = 0.0
    try:
        await catalog.open(model)
        for offset, vectors, origin in catalog_chunks(seeds, points, UPSERT_CHUNK):
            items = [CatalogItem(product_id(offset + row), categories[origin[row]], vector)
                     for row, vector in enumerate(vectors)]
            started = time.perf_counter()
            await catalog.upsert(items)
            upsert_s += time.perf_counter() - started
            best = _merge_top(best, queries @ vectors.T, offset)
        started = time.perf_counter()
        await catalog.optimize()
        index_s = time.perf_counter() - started
    finally:
        await catalog.close()
    return points / upsert_s, index_s, best[1]


async def _timed_searches(catalog: CatalogStore, queries: np.ndarray, limit: int = K
                          ) -> tuple[list[float], list[list[int]]]:
    seconds, found = [], []
    for query in queries:
        started = time.perf_counter()
        hits = await catalog.search(query, limit)
        seconds.append(time.perf_counter() - started)
        found.append([_index_of(hit.item.product_id) for hit in hits])
    return seconds, found


def _engine_seconds(shard_dir: Path, dim: int, warm_up: np.ndarray, queries: np.ndarray, exact: bool
                    ) -> list[float]:
    """The engine's own time for the adapter's top-10 query, its results never turned into Python objects, after
    the `warm_up` queries."""
    shard = EdgeShard.load(str(shard_dir), EdgeConfig(vectors=EdgeVectorParams(size=dim, distance=Distance.Cosine)))
    params = SearchParams(exact=True) if exact else SearchParams(hnsw_ef=DEFAULT_HNSW_EF)
    seconds = []
    try:
        for query in [*warm_up, *queries]:
            request = QueryRequest(limit=K, query=Query.Nearest(query.tolist()), with_payload=True, with_vector=True,
                                   params=params)
            started = time.perf_counter()
            shard.query(request)
            seconds.append(time.perf_counter() - started)
    finally:
        shard.close()
    return seconds[len(warm_up):]


async def bench_vectors(components: Components, model: ModelInfo, seeds: np.ndarray, categories: Sequence[str],
                        points: int, query_count: int, exact_query_count: int) -> VectorReport:
    """Builds a catalog of `points` perturbed real embeddings, then times searches with the shipped settings
    (HNSW above the exact-search size): top-10 and the gateway's candidate pool through the catalog adapter,
    top-10 in the engine alone, and exact top-10; recall is checked against numpy.

    Latencies are those of a catalog in service: each opening of the shard first answers as many other
    queries, untimed, so that the timed ones do not pay for mapping the index's pages into the process.
    """
    queries, _ = perturbed_embeddings(seeds, query_count, np.random.default_rng([1, points]))
    warm_up, _ = perturbed_embeddings(seeds, query_count, np.random.default_rng([2, points]))
    upsert_rate, index_s, truth = await build_catalog(components, model, seeds, categories, points, queries)
    settings = components.settings
    path = settings.data_dir / QDRANT_SUBDIR
    pool = max(K * settings.oversample, settings.min_candidates)
    baseline_mib = rss_mib()
    served = components.catalog_store(COLLECTION)
    await served.open(model)
    try:
        await _timed_searches(served, warm_up)
        seconds, found = await _timed_searches(served, queries)
        rss_mib_used = rss_mib() - baseline_mib
        pool_seconds, _ = await _timed_searches(served, queries, pool)
    finally:
        await served.close()
    recall = statistics.mean(len(set(hits) & set(expected)) / K for hits, expected in zip(found, truth.tolist()))
    exact_mode = points <= EXACT_SEARCH_MAX_POINTS
    engine_seconds = _engine_seconds(path / COLLECTION, model.dim, warm_up, queries, exact_mode)
    exact = EdgeCatalog(path, COLLECTION, exact_search_max_points=points)  # the engine with a setting of its own
    await exact.open(model)
    try:
        exact_seconds, _ = await _timed_searches(exact, queries[:exact_query_count])
    finally:
        await exact.close()
    per_million = 1_000_000 / points
    return VectorReport(points, model.dim, "exact" if exact_mode else "HNSW", DEFAULT_HNSW_EF, EXACT_SEARCH_MAX_POINTS,
                        upsert_rate, index_s, summarize(seconds), recall, pool, summarize(pool_seconds),
                        summarize(engine_seconds), summarize(exact_seconds), rss_mib_used * per_million,
                        _disk_mib(path / COLLECTION) * per_million)
