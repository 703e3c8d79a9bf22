"""Layer 5: the history fetch from Redis, and bulk ingestion (decode, embed through Triton, upsert)."""

import time
from dataclasses import dataclass

from bench.workload import ImageSet
from gateway.composition import Components
from gateway.indexer import NewProduct
from harness.load import Latency, summarize

BENCH_USER = "bench-history-user"
INGEST_COLLECTION = "ingested"


async def bench_history(components: Components, fetches: int) -> Latency:
    """Latency of reading one shopper's full history (the gateway's per-request read), one at a time."""
    history = components.history(namespace="bench")
    max_views = components.settings.history_max_views
    try:
        for view in range(max_views):
            await history.record(BENCH_USER, f"bench-{view:07d}", view)
        await history.recent(BENCH_USER)
        seconds = []
        for _ in range(fetches):
            started = time.perf_counter()
            views = await history.recent(BENCH_USER)
            seconds.append(time.perf_counter() - started)
        if len(views) != max_views:
            raise RuntimeError(f"read {len(views)} views of {max_views}")
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


async def bench_ingestion(components: Components, version: str, images: ImageSet, count: int) -> IngestReport:
    """Images/s of the ingestion path `make index` and Catalog.UpsertProducts share: PNG bytes in batches of the
    configured size, decoded in the gateway's pool, embedded by Triton (model `version`), upserted into a fresh
    collection."""
    products = [NewProduct(f"ingest-{index:07d}", images.categories[index % len(images)],
                           images.encoded[index % len(images)]) for index in range(count)]
    size = components.settings.ingest_batch_size
    async with components.building(version, INGEST_COLLECTION, recreate=True) as built:
        await built.indexer.index(products[:size])  # warm-up batch, then measured from a fresh start
        started = time.perf_counter()
        for start in range(size, count, size):
            await built.indexer.index(products[start:start + size])
        elapsed = time.perf_counter() - started
    measured = count - size
    return IngestReport(measured, size, elapsed, measured / elapsed)
