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
import logging

from gateway.catalog.aliases import CatalogAliases, versioned_collection
from gateway.composition import Components
from gateway.config import Settings
from gateway.domain import ModelInfo
from ops.index import Source, add_source_arguments, check_source_arguments, ingest, read_source
from stack.local import local_triton

log = logging.getLogger(__name__)
DEFAULT_CATALOG_SIZE = 6000  # the demo catalog of `make run`


async def build_collection(settings: Settings, version: str, source: Source, batch_size: int,
                           recreate: bool = False) -> tuple[str, ModelInfo, int]:
    """Embeds the source's products with model `version` into its versioned collection; (collection, model,
    products). Products already in the collection are skipped, so an interrupted build resumes; `recreate`
    starts over. The collection is closed on return, so a gateway can open it."""
    async with Components(settings).building(version, recreate=recreate) as built:
        log.info("building collection '%s' with %s", built.catalog.collection, built.embedder.info)
        await ingest(built.indexer, source, batch_size)
        return built.catalog.collection, built.embedder.info, await built.catalog.count()


async def roll_out(settings: Settings, version: str, source: Source, batch_size: int, recreate: bool = False
                   ) -> str:
    """Builds the collection of model `version` and points the catalog alias at it; returns the collection."""
    aliases = Components(settings).catalog_aliases()
    try:
        before = await aliases.target(settings.collection)
        collection, model, count = await build_collection(settings, version, source, batch_size, recreate)
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
    aliases = Components(settings).catalog_aliases()
    try:
        collection = await previous_collection(aliases, settings.collection, version)
        await aliases.point(settings.collection, collection)
        model = await aliases.built_with(collection)
    finally:
        await aliases.close()
    log.info("catalog '%s' now points at '%s' (%s)", settings.collection, collection, model)
    return collection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("out", help="build the catalog with another model version and switch to it")
    out.add_argument("--version", help="model version (default: the newest Triton serves)")
    add_source_arguments(out, default_limit=DEFAULT_CATALOG_SIZE)
    out.add_argument("--recreate", action="store_true", help="rebuild the version's collection from scratch")
    back = commands.add_parser("back", help="switch the catalog back to an earlier model version's collection")
    back.add_argument("--version", help="model version to go back to (default: the previous one)")
    args = parser.parse_args()
    if args.command == "out":
        check_source_arguments(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    if args.command == "back":
        asyncio.run(roll_back(settings, args.version))
        return
    with local_triton(settings) as settings:
        asyncio.run(roll_out(settings, args.version or "", read_source(args), args.batch_size, args.recreate))


if __name__ == "__main__":
    main()
