"""Catalog ingestion: the one code path from product images to stored vectors (CLI and gRPC alike)."""

import asyncio
import copy
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from .domain import CatalogItem, InvalidArgument
from .images import ImageLimits, encode_thumbnail, preprocess
from .metrics import Metrics
from .ports import CatalogStore, Embedder, Search
from .validation import check_attributes, check_id

# A product's neighbour similarity is its mean cosine similarity to this many nearest other products.
NEIGHBOURS = 10
NEIGHBOURHOOD_BATCH = 256


@dataclass(frozen=True)
class NewProduct:
    """A product to ingest: its image as encoded bytes or as model input (uint8 [224,224,3])."""

    product_id: str
    category: str
    image: bytes | np.ndarray
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass
class IndexReport:
    """What one call stored, skipped as already present, and rejected (with the reason)."""

    stored: int = 0
    skipped: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def add(self, other: "IndexReport") -> None:
        self.stored += other.stored
        self.skipped += other.skipped
        self.rejected.extend(other.rejected)


class Indexer:
    """Decodes, embeds (through Triton) and upserts batches of products."""

    def __init__(self, embedder: Embedder, catalog: CatalogStore, decode_pool: Executor,
                 limits: ImageLimits, metrics: Metrics, embed_timeout_s: float = 30.0) -> None:
        self._embedder = embedder
        self._catalog = catalog
        self._decode_pool = decode_pool
        self._limits = limits
        self._metrics = metrics
        self._embed_timeout_s = embed_timeout_s

    def with_backends(self, embedder: Embedder, catalog: CatalogStore) -> "Indexer":
        """This indexer over another embedder and catalog (a model rollout), sharing everything else."""
        switched = copy.copy(self)
        switched._embedder, switched._catalog = embedder, catalog
        return switched

    async def index(self, products: Sequence[NewProduct], skip_existing: bool = False,
                    neighbourhoods: bool = True) -> IndexReport:
        """Stores one batch; with skip_existing, products already in the catalog are not embedded again. With
        neighbourhoods, the stored products' neighbour similarities are set (bulk loads set them once at the end,
        in `finish`)."""
        report = IndexReport()
        if skip_existing:
            present = await self._catalog.retrieve([p.product_id for p in products], with_vectors=False)
            report.skipped = sum(p.product_id in present for p in products)
            products = [p for p in products if p.product_id not in present]
        accepted: list[NewProduct] = []
        pixels: list[np.ndarray] = []
        thumbnails: list[bytes] = []
        decoded = await asyncio.gather(*(self._decode(p) for p in products), return_exceptions=True)
        for product, result in zip(products, decoded, strict=True):
            if isinstance(result, InvalidArgument):
                report.rejected.append((product.product_id, str(result)))
            elif isinstance(result, BaseException):
                raise result
            else:
                accepted.append(product)
                pixels.append(result[0])
                thumbnails.append(result[1])
        if accepted:
            vectors = await self._embedder.embed(np.stack(pixels), self._embed_timeout_s)
            await self._catalog.upsert([CatalogItem(p.product_id, p.category, vector, dict(p.attributes), thumbnail)
                                        for p, vector, thumbnail in zip(accepted, vectors, thumbnails, strict=True)])
            self._metrics.products_ingested.inc(len(accepted))
            report.stored = len(accepted)
            if neighbourhoods:
                await self.set_neighbourhoods([p.product_id for p in accepted])
        return report

    async def finish(self, product_ids: Sequence[str]) -> None:
        """After a bulk load: builds the catalog's search index, then sets the products' neighbour similarities."""
        await self._catalog.optimize()
        await self.set_neighbourhoods(product_ids)

    async def set_neighbourhoods(self, product_ids: Sequence[str]) -> None:
        """Sets each stored product's neighbour similarity: its mean cosine similarity to its NEIGHBOURS nearest
        other products (the ranker's local scaling). A product's neighbours keep theirs until they are set again,
        which a bulk load does for all."""
        for start in range(0, len(product_ids), NEIGHBOURHOOD_BATCH):
            stored = list((await self._catalog.retrieve(product_ids[start:start + NEIGHBOURHOOD_BATCH])).values())
            found = await self._catalog.search_batch([Search(item.vector, NEIGHBOURS + 1) for item in stored])
            values = {}
            for item, hits in zip(stored, found, strict=True):
                scores = [hit.score for hit in hits if hit.item.product_id != item.product_id][:NEIGHBOURS]
                if scores:
                    values[item.product_id] = float(np.mean(scores))
            await self._catalog.set_neighbour_similarities(values)

    async def _decode(self, product: NewProduct) -> tuple[np.ndarray, bytes]:
        """The product's model input and thumbnail, made in the decode pool."""
        check_id("product_id", product.product_id)
        check_id("category", product.category)
        check_attributes(product.attributes)
        return await asyncio.get_running_loop().run_in_executor(
            self._decode_pool, _pixels_and_thumbnail, product.image, self._limits)


def _pixels_and_thumbnail(image: bytes | np.ndarray, limits: ImageLimits) -> tuple[np.ndarray, bytes]:
    pixels = image if isinstance(image, np.ndarray) else preprocess(image, limits)
    return pixels, encode_thumbnail(pixels)
