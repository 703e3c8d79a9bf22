"""The product catalog in Qdrant: a Qdrant server's collections, or shards of the engine embedded in this process.

`gateway.composition.Components` picks the backend from the settings (QDRANT_URL set or not).
"""

from gateway.catalog.aliases import CatalogAliases, EdgeAliases, ServerAliases
from gateway.catalog.edge import EdgeCatalog
from gateway.catalog.server import QdrantClientCatalog
from gateway.catalog.store import EXACT_SEARCH_MAX_POINTS, CatalogStore

__all__ = [
    "EXACT_SEARCH_MAX_POINTS",
    "CatalogAliases",
    "CatalogStore",
    "EdgeAliases",
    "EdgeCatalog",
    "QdrantClientCatalog",
    "ServerAliases",
]
