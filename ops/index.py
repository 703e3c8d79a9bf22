"""`make index` (python -m ops.index): bulk ingestion of catalog products, with a progress bar.

Products come from Fashion-MNIST or from a CSV listing a folder of images (catalog_sources); they are decoded,
embedded by Triton and stored in the catalog collection that the alias QDRANT_COLLECTION points at, exactly as
`Catalog.UpsertProducts` stores them. Products already stored are skipped, so an interrupted run resumes; bad
rows are listed and skipped, never fatal. The settings are the gateway's (docs/configuration.md); `make index`
starts a local tritonserver when TRITON_URL is not set.
"""

import argparse
import asyncio
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from catalog_sources import products as sources
from gateway.composition import Components
from gateway.config import Settings
from gateway.indexer import Indexer, IndexReport, NewProduct
from gateway.serving import serving_target
from stack.local import local_triton

log = logging.getLogger(__name__)
Source = tuple[int, Iterator[NewProduct | sources.Unreadable]]


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


async def ingest(indexer: Indexer, source: Source, batch_size: int, skip_existing: bool = True) -> IndexReport:
    """Indexes a source's products in batches with a progress bar; bad rows are reported, never fatal."""
    total, products = source
    report = IndexReport()
    product_ids: list[str] = []
    with tqdm(total=total, unit="img", desc="indexing") as progress:
        for batch, unreadable in batched(products, batch_size):
            product_ids.extend(product.product_id for product in batch)
            done = (await indexer.index(batch, skip_existing=skip_existing, neighbourhoods=False) if batch
                    else IndexReport())
            done.rejected.extend((row.product_id, row.reason) for row in unreadable)
            report.add(done)
            progress.update(len(batch) + len(unreadable))
    for product_id, reason in report.rejected:
        log.warning("skipped %s: %s", product_id, reason)
    log.info("indexed: %d stored, %d already present, %d skipped", report.stored, report.skipped,
             len(report.rejected))
    await indexer.finish(product_ids)
    log.info("search index built and neighbour similarities set")
    return report


async def index_fashion_mnist(indexer: Indexer, size: int, batch_size: int) -> None:
    """Indexes the first `size` Fashion-MNIST training images (resumes where an earlier run stopped)."""
    await ingest(indexer, sources.fashion_mnist("train", limit=size), batch_size)


def add_source_arguments(parser: argparse.ArgumentParser, default_limit: int | None = None) -> None:
    """The arguments that name the products to ingest (read them with `read_source`)."""
    parser.add_argument("source", choices=["fashion-mnist", "folder"])
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--limit", type=int, default=default_limit, help="first N Fashion-MNIST images only"
                        + (f" (default {default_limit})" if default_limit else ""))
    parser.add_argument("--csv", type=Path, help="folder source: CSV with product_id,image,category,...")
    parser.add_argument("--root", type=Path, help="folder source: base of the image paths (default: CSV folder)")
    parser.add_argument("--batch-size", type=int, default=16)


def read_source(args: argparse.Namespace) -> Source:
    """The number of products and the products named by the `add_source_arguments` arguments."""
    if args.source == "fashion-mnist":
        return sources.fashion_mnist(args.split, limit=args.limit)
    return sources.image_folder(args.csv, args.root)


def check_source_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.source == "folder" and not args.csv:
        parser.error("the folder source needs --csv")


async def run_index(settings: Settings, source: Source, batch_size: int, force: bool = False,
                    recreate: bool = False) -> IndexReport:
    """Ingests `source` into the served catalog: the collection the alias points at, with the model version it
    records; without one, a new collection for the served model, which the alias then points at."""
    components = Components(settings)
    aliases = components.catalog_aliases()
    try:
        collection, version = await serving_target(aliases, settings, recreate)
        async with components.building(version, collection or "", recreate) as built:
            if collection is None:
                await aliases.point(settings.collection, built.catalog.collection)
            report = await ingest(built.indexer, source, batch_size, skip_existing=not force)
    finally:
        await aliases.close()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ops.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(parser)
    parser.add_argument("--force", action="store_true", help="re-embed products already in the catalog")
    parser.add_argument("--recreate", action="store_true",
                        help="drop the catalog collection first (needed after changing the model)")
    args = parser.parse_args(argv)
    check_source_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with local_triton(Settings.from_env()) as settings:
        asyncio.run(run_index(settings, read_source(args), args.batch_size, args.force, args.recreate))


if __name__ == "__main__":
    main()
