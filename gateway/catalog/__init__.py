"""The product catalog in Qdrant: a Qdrant server when QDRANT_URL is set, else the engine embedded here."""

import math
from pathlib import Path

from qdrant_client import AsyncQdrantClient

from gateway.catalog.aliases import CatalogAliases, EdgeAliases, ServerAliases
from gateway.catalog.edge import EdgeCatalog
from gateway.catalog.server import QdrantClientCatalog
from gateway.catalog.store import EXACT_SEARCH_MAX_POINTS, CatalogStore

__all__ = [
    "EXACT_SEARCH_MAX_POINTS",
    "CatalogAliases",
    "CatalogStore",
    "EdgeCatalog",
    "QdrantClientCatalog",
    "open_catalog_aliases",
    "open_catalog_store",
]


def open_catalog_store(url: str | None, data_dir: Path, collection: str, timeout_s: float) -> CatalogStore:
    """The catalog store for this configuration; call `open(model)` on it before use.

    With `url`, the Qdrant server there, each request limited to `timeout_s` (rounded up to whole seconds);
    without it, the embedded engine with its shard in `data_dir / "qdrant" / collection`.
    """
    if url:
        client = AsyncQdrantClient(url=url, timeout=max(1, math.ceil(timeout_s)))
        return QdrantClientCatalog(client, collection)
    return EdgeCatalog(data_dir / "qdrant", collection)


def open_catalog_aliases(url: str | None, data_dir: Path, timeout_s: float) -> CatalogAliases:
    """The catalog aliases of the Qdrant server at `url`, or of the embedded engine under `data_dir`."""
    if url:
        return ServerAliases(AsyncQdrantClient(url=url, timeout=max(1, math.ceil(timeout_s))))
    return EdgeAliases(data_dir / "qdrant")
