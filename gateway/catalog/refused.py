"""A catalog the gateway must not serve: every call answers with the reason (e.g. built with another model)."""

from collections.abc import Mapping, Sequence

import numpy as np

from gateway.catalog.store import Search, SimilarityQuery
from gateway.domain import EVERY_PRODUCT, CatalogItem, FailedPrecondition, ModelInfo, Neighbour, ProductFilter


class RefusedCatalog:
    """Stands in for a collection that could not be opened, so the gateway keeps running and says why it cannot
    serve."""

    def __init__(self, collection: str, reason: FailedPrecondition) -> None:
        self.collection = collection
        self._reason = reason

    async def open(self, model: ModelInfo) -> None:
        raise self._reason

    async def drop(self) -> None:
        raise self._reason

    async def upsert(self, items: Sequence[CatalogItem]) -> None:
        raise self._reason

    async def delete(self, product_ids: Sequence[str]) -> int:
        raise self._reason

    async def search(self, vector: np.ndarray, limit: int, where: ProductFilter = EVERY_PRODUCT,
                     exclude_ids: Sequence[str] = ()) -> list[Neighbour]:
        raise self._reason

    async def search_batch(self, searches: Sequence[Search]) -> list[list[Neighbour]]:
        raise self._reason

    async def set_neighbour_similarities(self, values: Mapping[str, float]) -> None:
        raise self._reason

    async def similarities(self, queries: Sequence[SimilarityQuery]) -> list[dict[str, float]]:
        raise self._reason

    async def retrieve(self, product_ids: Sequence[str], with_vectors: bool = True) -> dict[str, CatalogItem]:
        raise self._reason

    async def thumbnail(self, product_id: str) -> bytes | None:
        raise self._reason

    async def existing_categories(self, categories: Sequence[str]) -> set[str]:
        raise self._reason

    async def count(self) -> int:
        raise self._reason

    async def optimize(self) -> bool:
        raise self._reason

    async def ping(self) -> None:
        raise self._reason

    async def close(self) -> None:
        pass  # the store was closed when it refused to open
