"""The pipeline's view of its three backends; adapters implement these protocols."""

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .catalog.store import CatalogStore, Search, SimilarityQuery
from .domain import Feedback, ModelInfo, ShopperRecord, View
from .images import ImageLimits

__all__ = ["CatalogStore", "Embedder", "HistoryStore", "Search", "SimilarityQuery"]


class Embedder(Protocol):
    """Turns preprocessed images (uint8 [N,224,224,3]) into L2-normalised embeddings (float32 [N,D]); one that
    `decodes` also turns an encoded photo into its embedding."""

    info: ModelInfo
    decodes: bool

    async def embed(self, images: np.ndarray, timeout_s: float) -> np.ndarray: ...

    async def embed_encoded(self, data: bytes, limits: ImageLimits, timeout_s: float) -> np.ndarray: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class HistoryStore(Protocol):
    """Each user's recent views and dismissals, newest first, and every product's popularity."""

    async def record(self, user_id: str, product_id: str, at_ms: int, feedback: Feedback = Feedback.VIEW
                     ) -> None: ...

    async def recent(self, user_id: str, limit: int | None = None) -> list[View]: ...

    async def shopper(self, user_id: str) -> ShopperRecord: ...

    async def popularity(self, product_ids: Sequence[str]) -> list[float]: ...

    async def forget(self, user_id: str) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
