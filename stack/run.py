"""`make run` and `make index`: start the local parts the environment does not point at, then serve or ingest.

Without TRITON_URL a local tritonserver serves ``model_repository/``; without REDIS_URL a local
redis-server keeps history under ``$DATA_DIR/redis`` (append-only); without QDRANT_URL the gateway
embeds the Qdrant engine under ``$DATA_DIR/qdrant``. Ctrl-C stops everything that was started.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from tqdm import tqdm

from gateway import sources
from gateway.catalog import CatalogStore, EdgeCatalog
from gateway.config import Settings
from gateway.domain import FailedPrecondition
from gateway.indexer import IndexReport, Indexer, NewProduct
from gateway.metrics import Metrics
from gateway.server import open_pipeline, serve
from stack.redis import RedisServer
from stack.triton import TritonServer
from webui import listen_address, local_target, start_webui

log = logging.getLogger("stack")
MODEL_REPOSITORY = Path("model_repository")
TRITON_POLL_S = 5


@contextlib.contextmanager
def local_backends(settings: Settings, serving: bool = False) -> Iterator[Settings]:
    """Starts tritonserver and redis-server where no URL is configured; yields settings that point at them.

    The tritonserver of a serving stack works in ``$DATA_DIR/triton`` and loads model versions exported
    while it runs (so ``make rollout`` can switch to them); any other one works in a temporary folder.
    """
    with contextlib.ExitStack() as stack:
        if not settings.triton_url:
            log.info("starting tritonserver over %s", MODEL_REPOSITORY)
            server = (TritonServer(MODEL_REPOSITORY, work_dir=settings.data_dir / "triton", poll_s=TRITON_POLL_S)
                      if serving else TritonServer(MODEL_REPOSITORY))
            triton = stack.enter_context(server)
            settings = dataclasses.replace(settings, triton_url=triton.grpc_url)
            log.info("tritonserver ready: gRPC %s, metrics %s", triton.grpc_url, triton.metrics_url)
        if not settings.redis_url:
            redis_server = stack.enter_context(RedisServer(settings.data_dir / "redis"))
            settings = dataclasses.replace(settings, redis_url=redis_server.url)
            log.info("redis-server ready: %s", redis_server.url)
        yield settings


def batched(products: Iterable[NewProduct | sources.Unreadable], size: int
            ) -> Iterator[tuple[list[NewProduct], list[sources.Unreadable]]]:
    """Groups products into batches, setting unreadable rows aside."""
    batch: list[NewProduct] = []
    unreadable: list[sources.Unreadable] = []
    for product in products:
        if isinstance(product, sources.Unreadable):
            unreadable.append(product)
            continue
        batch.append(product)
        if len(batch) == size:
            yield batch, unreadable
            batch, unreadable = [], []
    if batch or unreadable:
        yield batch, unreadable


async def ingest(indexer: Indexer, total: int, products: Iterable[NewProduct | sources.Unreadable],
                 batch_size: int, skip_existing: bool = True) -> IndexReport:
    """Indexes products in batches with a progress bar; bad rows are reported, never fatal."""
    report = IndexReport()
    with tqdm(total=total, unit="img", desc="indexing") as progress:
        for batch, unreadable in batched(products, batch_size):
            done = await indexer.index(batch, skip_existing=skip_existing) if batch else IndexReport()
            done.rejected.extend((row.product_id, row.reason) for row in unreadable)
            report.add(done)
            progress.update(len(batch) + len(unreadable))
    for product_id, reason in report.rejected:
        log.warning("skipped %s: %s", product_id, reason)
    log.info("indexed: %d stored, %d already present, %d skipped", report.stored, report.skipped,
             len(report.rejected))
    return report


async def index_demo_catalog(indexer: Indexer, size: int, batch_size: int) -> None:
    """Indexes the first `size` Fashion-MNIST training images (resumes where an earlier run stopped)."""
    total, products = sources.fashion_mnist("train", limit=size)
    await ingest(indexer, total, products, batch_size)


async def build_index(catalog: CatalogStore) -> None:
    """Builds the embedded engine's HNSW index after bulk ingestion (a Qdrant server does this itself)."""
    if isinstance(catalog, EdgeCatalog) and await catalog.optimize():
        log.info("catalog index optimised")


def add_source_arguments(parser: argparse.ArgumentParser, default_limit: int | None = None) -> None:
    """The arguments that name the products to ingest (read them with `read_source`)."""
    parser.add_argument("source", choices=["fashion-mnist", "folder"])
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--limit", type=int, default=default_limit, help="first N Fashion-MNIST images only"
                        + (f" (default {default_limit})" if default_limit else ""))
    parser.add_argument("--csv", type=Path, help="folder source: CSV with product_id,image,category,...")
    parser.add_argument("--root", type=Path, help="folder source: base of the image paths (default: CSV folder)")
    parser.add_argument("--batch-size", type=int, default=16)


def read_source(args: argparse.Namespace) -> tuple[int, Iterator[NewProduct | sources.Unreadable]]:
    """The number of products and the products named by the `add_source_arguments` arguments."""
    if args.source == "fashion-mnist":
        return sources.fashion_mnist(args.split, limit=args.limit)
    return sources.image_folder(args.csv, args.root)


async def run_index(settings: Settings, args: argparse.Namespace) -> None:
    total, products = read_source(args)
    async with open_pipeline(settings, Metrics(CollectorRegistry()), recreate_catalog=args.recreate) as (
            pipeline, indexer):
        await ingest(indexer, total, products, args.batch_size, skip_existing=not args.force)
        await build_index(pipeline.catalog)


async def run_serve(settings: Settings, demo_size: int) -> None:
    if demo_size:
        async with open_pipeline(settings, Metrics(CollectorRegistry())) as (pipeline, indexer):
            try:
                await index_demo_catalog(indexer, demo_size, settings.ingest_batch_size)
                await build_index(pipeline.catalog)
            except FailedPrecondition as refusal:
                log.error("demo catalog not indexed: %s", refusal)
    webui = await start_webui(local_target(settings.grpc_address), *listen_address(os.environ),
                              token=os.environ.get("WEBUI_TOKEN", ""))
    try:
        await serve(settings)
    finally:
        await webui.stop()


def _interrupt(signum: int, frame: object) -> None:
    """Turns SIGTERM into the same orderly stop as Ctrl-C, so child servers are stopped too."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="start every part and serve until Ctrl-C")
    serve_cmd.add_argument("--demo-size", type=int, default=int(os.environ.get("DEMO_CATALOG_SIZE", "6000")),
                           help="Fashion-MNIST training images indexed before serving (0: none)")
    index_cmd = commands.add_parser("index", help="ingest products into the catalog")
    add_source_arguments(index_cmd)
    index_cmd.add_argument("--force", action="store_true", help="re-embed products already in the catalog")
    index_cmd.add_argument("--recreate", action="store_true",
                           help="drop the catalog collection first (needed after changing the model)")
    args = parser.parse_args()
    if args.command == "index" and args.source == "folder" and not args.csv:
        parser.error("the folder source needs --csv")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    with local_backends(Settings.from_env(os.environ), serving=args.command == "serve") as settings:
        try:
            if args.command == "serve":
                asyncio.run(run_serve(settings, args.demo_size))
            else:
                asyncio.run(run_index(settings, args))
        except KeyboardInterrupt:
            log.info("stopped")


if __name__ == "__main__":
    main()
