"""Layer 5: the history fetch from Redis, and bulk ingestion (decode, embed through Triton, upsert)."""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.stats import Latency, summarize
from bench.workload import ImageSet
from gateway.catalog import EdgeCatalog
from gateway.config import Settings
from gateway.embedder import TritonEmbedder
from gateway.history import RedisHistory
from gateway.indexer import Indexer, NewProduct
from gateway.metrics import Metrics

BENCH_USER = "bench-history-user"


async def bench_history(redis_url: str, fetches: int, settings: Settings) -> Latency:
    """Latency of reading one shopper's full history (the gateway's per-request read), one at a time."""
    history = RedisHistory.from_url(redis_url, max_views=settings.history_max_views, namespace="bench",
                                    timeout_s=settings.history_timeout_s)
    try:
        for view in range(settings.history_max_views):
            await history.record(BENCH_USER, f"bench-{view:07d}", view)
        await history.recent(BENCH_USER)
        seconds = []
        for _ in range(fetches):
            started = time.perf_counter()
            views = await history.recent(BENCH_USER)
            seconds.append(time.perf_counter() - started)
        if len(views) != settings.history_max_views:
            raise RuntimeError(f"read {len(views)} views of {settings.history_max_views}")
        await history.forget(BENCH_USER)
    finally:
        await history.close()
    return summarize(seconds)


@dataclass(frozen=True)
class IngestReport:
    images: int
    batch_size: int
    seconds: float
    images_per_s: float


async def bench_ingestion(triton_url: str, version: str, path: Path, images: ImageSet, count: int,
                          settings: Settings) -> IngestReport:
    """Images/s of the ingestion path `make index` and Catalog.UpsertProducts share: PNG bytes in batches
    of the configured size, decoded in the gateway's pool, embedded by Triton (model `version`), upserted into a
    fresh catalog."""
    embedder = await TritonEmbedder.connect(triton_url, settings.model_name, version,
                                            max_message_bytes=settings.max_message_bytes)
    catalog = EdgeCatalog(path, "ingested")
    decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
    products = [NewProduct(f"ingest-{index:07d}", images.categories[index % len(images)],
                           images.png[index % len(images)]) for index in range(count)]
    size = settings.ingest_batch_size
    try:
        await catalog.open(embedder.info)
        indexer = Indexer(embedder, catalog, decode_pool, settings.image_limits, Metrics(CollectorRegistry()))
        await indexer.index(products[:size])  # warm-up batch, then measured from a fresh start
        started = time.perf_counter()
        for start in range(size, count, size):
            await indexer.index(products[start:start + size])
        elapsed = time.perf_counter() - started
    finally:
        await catalog.close()
        await embedder.close()
        decode_pool.shutdown()
    measured = count - size
    return IngestReport(measured, size, elapsed, measured / elapsed)
