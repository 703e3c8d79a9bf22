"""The composition root: the one place that turns Settings into adapters and wires them together.

The server, the alias follower, the operator commands (index, rollout), the benchmark and the evaluation all build
their Triton embedder, catalog store and aliases, history store and decode pool here, so each is configured the
same way from the same Settings, and only this module names the concrete classes.
"""

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from qdrant_client import AsyncQdrantClient

from .catalog.aliases import CatalogAliases, EdgeAliases, ServerAliases, versioned_collection
from .catalog.edge import EdgeCatalog
from .catalog.refused import RefusedCatalog
from .catalog.server import QdrantClientCatalog
from .catalog.store import CatalogStore
from .config import Settings, SettingsError
from .domain import FailedPrecondition
from .embedder import TritonEmbedder
from .history import DEFAULT_NAMESPACE, RedisHistory
from .indexer import Indexer
from .metrics import Metrics
from .pipeline import Pipeline
from .serving import Serving, serving_target

log = logging.getLogger(__name__)
QDRANT_SUBDIR = "qdrant"  # the embedded engine's shards and aliases, under DATA_DIR
SERVERS = {"triton_url": "a Triton server, e.g. TRITON_URL=triton:8001",
           "redis_url": "a Redis server, e.g. REDIS_URL=redis://redis:6379/0"}


@dataclass(frozen=True)
class Collection:
    """A catalog collection being built: the embedder of its model version, the store, an indexer over both."""

    embedder: TritonEmbedder
    catalog: CatalogStore
    indexer: Indexer


class Components:
    """Builds the gateway's adapters from `settings`; what it builds belongs to the caller, who closes it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def catalog_aliases(self) -> CatalogAliases:
        """The catalog aliases of the Qdrant server at QDRANT_URL, or of the embedded engine under DATA_DIR."""
        if self.settings.qdrant_url:
            return ServerAliases(self._qdrant_client(self.settings.qdrant_url))
        return EdgeAliases(self.settings.data_dir / QDRANT_SUBDIR)

    def catalog_store(self, collection: str) -> CatalogStore:
        """The store of `collection` (call `open(model)` before use): a collection of the Qdrant server at
        QDRANT_URL, else a shard of the embedded engine under DATA_DIR."""
        if self.settings.qdrant_url:
            return QdrantClientCatalog(self._qdrant_client(self.settings.qdrant_url), collection)
        return EdgeCatalog(self.settings.data_dir / QDRANT_SUBDIR, collection)

    def _qdrant_client(self, url: str) -> AsyncQdrantClient:
        """A client with QDRANT_API_KEY whose requests give up after SEARCH_TIMEOUT_SECONDS (whole seconds)."""
        return AsyncQdrantClient(url=url, api_key=self.settings.qdrant_api_key,
                                 timeout=max(1, math.ceil(self.settings.search_timeout_s)))

    async def embedder(self, version: str, model_name: str = "") -> TritonEmbedder:
        """A client of model `model_name` (default MODEL_NAME) at `version` (empty: the latest) at TRITON_URL, and of
        Triton's image model with IMAGE_PREPROCESSING=triton."""
        return await TritonEmbedder.connect(self._required("triton_url"), model_name or self.settings.model_name,
                                            version, max_message_bytes=self.settings.max_message_bytes,
                                            decodes=self.settings.image_preprocessing == "triton")

    def history(self, namespace: str = DEFAULT_NAMESPACE) -> RedisHistory:
        """The shoppers' views in the Redis at REDIS_URL, under the key prefix `namespace`."""
        settings = self.settings
        return RedisHistory.from_url(self._required("redis_url"), max_views=settings.history_max_views,
                                     ttl_s=settings.history_ttl_s, timeout_s=settings.history_timeout_s,
                                     namespace=namespace, max_dismissals=settings.history_max_dismissals,
                                     purchase_weight=settings.popularity_purchase_weight)

    def decode_pool(self) -> ThreadPoolExecutor:
        """The threads that decode images (DECODE_WORKERS)."""
        return ThreadPoolExecutor(self.settings.decode_workers, thread_name_prefix="decode")

    def check_servers(self) -> None:
        """SettingsError unless the settings name the servers the gateway cannot run without."""
        for field in SERVERS:
            self._required(field)

    def _required(self, field: str) -> str:
        value: str | None = getattr(self.settings, field)
        if not value:
            raise SettingsError(f"{field.upper()} is not set: the gateway needs {SERVERS[field]} "
                                "(`make run` starts a local one)")
        return value

    async def open_collection(self, collection: str, embedder: TritonEmbedder, recreate: bool = False
                              ) -> CatalogStore:
        """The store of `collection`, opened for the embedder's model (FailedPrecondition if it was built with
        another); with `recreate` emptied first. Nothing stays open when it fails."""
        catalog = self.catalog_store(collection)
        try:
            if recreate:
                await catalog.drop()
            await catalog.open(embedder.info)
        except BaseException:
            await catalog.close()
            raise
        return catalog

    @contextlib.asynccontextmanager
    async def serving(self, metrics: Metrics, recreate_catalog: bool = False) -> AsyncIterator[Serving]:
        """The pipeline and indexer over Triton, the catalog and the history store; all closed on exit.

        The catalog is the collection the alias QDRANT_COLLECTION points at, embedded with the model version that
        collection records (`gateway.serving.serving_target`); a new catalog is created as
        ``<name>-v<version>`` with the alias pointing at it. With recreate_catalog that collection is dropped
        first and built anew with the served model. A catalog built with another model is served as a
        RefusedCatalog, whose every call says so, so the gateway still starts and reports why.
        """
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            aliases = self.catalog_aliases()
            stack.push_async_callback(aliases.close)
            collection, version = await serving_target(aliases, settings, recreate_catalog)
            embedder = await self.embedder(version)
            stack.push_async_callback(embedder.close)
            decode_pool = stack.enter_context(self.decode_pool())
            name = collection or versioned_collection(settings.collection, embedder.info.version)
            catalog: CatalogStore
            try:
                catalog = await self.open_collection(name, embedder, recreate_catalog)
                stack.push_async_callback(catalog.close)
                if collection is None:
                    await aliases.point(settings.collection, name)
            except FailedPrecondition as refusal:
                log.error("the catalog cannot be served: %s", refusal)
                catalog = RefusedCatalog(name, refusal)
            history = self.history()
            stack.push_async_callback(history.close)
            yield Serving(Pipeline(embedder, catalog, history, settings, metrics, decode_pool),
                          Indexer(embedder, catalog, decode_pool, settings.image_limits, metrics))

    @contextlib.asynccontextmanager
    async def building(self, version: str, collection: str = "", recreate: bool = False
                       ) -> AsyncIterator[Collection]:
        """The collection that model `version` (empty: the latest) builds, with an indexer over it: `collection`,
        by default the alias's versioned collection ``<QDRANT_COLLECTION>-v<version>``; with `recreate` emptied
        first. Products already in it stay, so an interrupted build resumes. Closed on exit, so that a gateway
        can open it."""
        async with contextlib.AsyncExitStack() as stack:
            embedder = await self.embedder(version)
            stack.push_async_callback(embedder.close)
            name = collection or versioned_collection(self.settings.collection, embedder.info.version)
            catalog = await self.open_collection(name, embedder, recreate)
            stack.push_async_callback(catalog.close)
            decode_pool = stack.enter_context(self.decode_pool())
            yield Collection(embedder, catalog, Indexer(embedder, catalog, decode_pool, self.settings.image_limits,
                                                        Metrics(CollectorRegistry())))
