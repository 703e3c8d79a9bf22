"""`make rollout` and `make rollback`: move the catalog to another model version without downtime.

rollout: embeds the catalog's products with model version V (Triton at TRITON_URL, else a local
tritonserver over model_repository/) into the collection ``<QDRANT_COLLECTION>-v<V>`` while the current
collection serves, then points the alias QDRANT_COLLECTION at it in one atomic step. A running gateway
follows within seconds: it switches to the new collection and to the model version it records as soon
as its Triton serves that version, and responses name the version that answered.

rollback: points the alias back at the collection of the previous model version (or of --version V),
which a rollout leaves in place.

Products written through the Catalog API while a rollout runs land in the collection serving then:
re-run the rollout (it skips products already embedded) or replay them after the switch.
"""

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from prometheus_client import CollectorRegistry

from gateway.catalog import open_catalog_aliases, open_catalog_store
from gateway.catalog.aliases import CatalogAliases, versioned_collection
from gateway.config import Settings
from gateway.domain import ModelInfo
from gateway.embedder import TritonEmbedder
from gateway.indexer import Indexer, NewProduct
from gateway.metrics import Metrics
from gateway.sources import Unreadable
from stack.run import MODEL_REPOSITORY, add_source_arguments, build_index, ingest, read_source
from stack.triton import TritonServer

log = logging.getLogger("stack.rollout")
DEMO_CATALOG_SIZE = int(os.environ.get("DEMO_CATALOG_SIZE") or 6000)


async def build_collection(settings: Settings, version: str, total: int,
                           products: Iterable[NewProduct | Unreadable], batch_size: int,
                           recreate: bool = False) -> tuple[str, ModelInfo, int]:
    """Embeds `products` with model `version` into its versioned collection; (collection, model, products).

    Products already in the collection are skipped, so an interrupted build resumes; `recreate` starts
    over. The collection is closed on return, so a gateway can open it.
    """
    if not settings.triton_url:
        raise ValueError("building a collection needs settings.triton_url")
    embedder = await TritonEmbedder.connect(settings.triton_url, settings.model_name, version,
                                            max_message_bytes=settings.max_message_bytes)
    collection = versioned_collection(settings.collection, embedder.info.version)
    catalog = open_catalog_store(settings.qdrant_url, settings.data_dir, collection,
                                 timeout_s=settings.search_timeout_s)
    decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
    try:
        if recreate:
            await catalog.drop()
        await catalog.open(embedder.info)
        indexer = Indexer(embedder, catalog, decode_pool, settings.image_limits, Metrics(CollectorRegistry()))
        log.info("building collection '%s' with %s", collection, embedder.info)
        await ingest(indexer, total, products, batch_size)
        await build_index(catalog)
        return collection, embedder.info, await catalog.count()
    finally:
        decode_pool.shutdown()
        await catalog.close()
        await embedder.close()


async def roll_out(settings: Settings, version: str, total: int, products: Iterable[NewProduct | Unreadable],
                   batch_size: int, recreate: bool = False) -> str:
    """Builds the collection of model `version` and points the catalog alias at it; returns the collection."""
    aliases = open_catalog_aliases(settings.qdrant_url, settings.data_dir, settings.search_timeout_s)
    try:
        before = await aliases.target(settings.collection)
        collection, model, count = await build_collection(settings, version, total, products, batch_size, recreate)
        if count == 0:
            raise SystemExit(f"error: collection '{collection}' is empty; the alias '{settings.collection}' "
                             "was not moved")
        await aliases.point(settings.collection, collection)
    finally:
        await aliases.close()
    log.info("catalog '%s' now points at '%s' (%d products, %s); it pointed at %s", settings.collection,
             collection, count, model, f"'{before}'" if before else "nothing")
    return collection


async def previous_collection(aliases: CatalogAliases, alias: str, version: str | None) -> str:
    """The collection a rollback moves `alias` to: that of `version`, else of the newest version below the
    current one whose collection exists."""
    current = await aliases.target(alias)
    if version is None:
        built_with = await aliases.built_with(current) if current else None
        if built_with is None or not built_with.version.isdigit():
            raise SystemExit(f"error: the catalog alias '{alias}' points at no versioned collection; "
                             "name the version to go to (VERSION=N)")
        candidates = [str(number) for number in range(int(built_with.version) - 1, 0, -1)]
    else:
        candidates = [version]
    for candidate in candidates:
        collection = versioned_collection(alias, candidate)
        if collection != current and await aliases.built_with(collection) is not None:
            return collection
    raise SystemExit(f"error: no collection of model version {' or '.join(candidates) or '(none below)'} for "
                     f"the catalog alias '{alias}' (it points at '{current}'); build one with `make rollout`")


async def roll_back(settings: Settings, version: str | None) -> str:
    """Points the catalog alias at the previous version's collection (or `version`'s); returns the collection."""
    aliases = open_catalog_aliases(settings.qdrant_url, settings.data_dir, settings.search_timeout_s)
    try:
        collection = await previous_collection(aliases, settings.collection, version)
        await aliases.point(settings.collection, collection)
        model = await aliases.built_with(collection)
    finally:
        await aliases.close()
    log.info("catalog '%s' now points at '%s' (%s)", settings.collection, collection, model)
    return collection


@contextlib.contextmanager
def with_triton(settings: Settings) -> Iterator[Settings]:
    """`settings`, pointing at a local tritonserver over model_repository/ when TRITON_URL is not set."""
    if settings.triton_url:
        yield settings
        return
    with TritonServer(MODEL_REPOSITORY) as triton:
        yield replace(settings, triton_url=triton.grpc_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("out", help="build the catalog with another model version and switch to it")
    out.add_argument("--version", help="model version (default: the newest Triton serves)")
    add_source_arguments(out, default_limit=DEMO_CATALOG_SIZE)
    out.add_argument("--recreate", action="store_true", help="rebuild the version's collection from scratch")
    back = commands.add_parser("back", help="switch the catalog back to an earlier model version's collection")
    back.add_argument("--version", help="model version to go back to (default: the previous one)")
    args = parser.parse_args()
    if args.command == "out" and args.source == "folder" and not args.csv:
        parser.error("the folder source needs --csv")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(os.environ)
    if args.command == "back":
        asyncio.run(roll_back(settings, args.version))
        return
    total, products = read_source(args)
    with with_triton(settings) as settings:
        asyncio.run(roll_out(settings, args.version or "", total, products, args.batch_size, args.recreate))


if __name__ == "__main__":
    main()
