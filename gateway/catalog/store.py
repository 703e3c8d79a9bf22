"""The catalog store interface and what its backends share: point ids, payloads, checks, model records."""

import base64
import functools
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from gateway.domain import (
    EVERY_PRODUCT,
    CatalogItem,
    FailedPrecondition,
    InvalidArgument,
    ModelInfo,
    Neighbour,
    ProductFilter,
)

# Searches are exact up to this many points; above it they use the HNSW index, which a backend builds
# only for collections this large (exact search over 20,000 x 1280-d points takes ~13 ms here).
EXACT_SEARCH_MAX_POINTS = 20_000
CATEGORY_FIELD = "category"
THUMBNAIL_FIELD = "thumbnail"
ATTRIBUTES_FIELD = "attributes"
# The attributes whose value is a decimal number, as numbers: what range filters match (the engine compares
# numbers only).
NUMBERS_FIELD = "attribute_numbers"
# A product's mean cosine similarity to its nearest catalog neighbours, set after it is stored.
NEIGHBOUR_FIELD = "neighbour_similarity"
# The payload fields searches and lookups read: everything but the thumbnail.
ITEM_FIELDS = ["product_id", CATEGORY_FIELD, ATTRIBUTES_FIELD, NEIGHBOUR_FIELD]
REINDEX_COMMAND = "`make index RECREATE=1`"

# A vector and the products to score against it.
SimilarityQuery = tuple[np.ndarray, Sequence[str]]


@dataclass(frozen=True)
class Search:
    """One search of a batch: the `limit` products most cosine-similar to `vector` that `where` allows, leaving out
    `exclude_ids`."""

    vector: np.ndarray
    limit: int
    where: ProductFilter = EVERY_PRODUCT
    exclude_ids: tuple[str, ...] = ()

# A point id as the engine is given it: text for Qdrant's API, a UUID object for the embedded engine. Callers bind
# it to the engine's own point id type, which admits both and is the type the engine answers with.
PointKey = TypeVar("PointKey", bound=Hashable)
T = TypeVar("T")
# Per query that names products: its point ids (each mapped to its product id) and its checked vector.
SimilarityTarget = tuple[dict[PointKey, str], list[float]]

_POINT_ID_NAMESPACE = uuid.UUID("6f0c5c1e-3b7a-5d2e-9a41-0d7f3c2b8e15")
_NO_VECTOR = np.empty(0, dtype=np.float32)
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class CatalogStore(Protocol):
    """Catalog products and their embeddings in a Qdrant collection built with one embedding model."""

    collection: str

    async def open(self, model: ModelInfo) -> None:
        """Create the collection for `model` if missing; FailedPrecondition if it was built with another."""

    async def drop(self) -> None:
        """Delete the collection and its model record (call before `open`), to re-index from scratch."""

    async def upsert(self, items: Sequence[CatalogItem]) -> None:
        """Insert or replace products by product id; durable when this returns."""

    async def delete(self, product_ids: Sequence[str]) -> int:
        """Delete products; returns how many of them existed."""

    async def search(
        self,
        vector: np.ndarray,
        limit: int,
        where: ProductFilter = EVERY_PRODUCT,
        exclude_ids: Sequence[str] = (),
    ) -> list[Neighbour]:
        """The `limit` products most cosine-similar to `vector`, best first, without their vectors."""

    async def search_batch(self, searches: Sequence[Search]) -> list[list[Neighbour]]:
        """The answer of each search, each under its own limit and filter; they go to the engine as one batch."""

    async def set_neighbour_similarities(self, values: Mapping[str, float]) -> None:
        """Store each product's mean cosine similarity to its nearest neighbours (NEIGHBOUR_FIELD); products not
        stored are skipped."""

    async def similarities(self, queries: Sequence[SimilarityQuery]) -> list[dict[str, float]]:
        """For each (vector, product ids) query, the cosine similarity to its vector of each stored product among
        its ids, by id; the queries go to the engine as one batch."""

    async def retrieve(self, product_ids: Sequence[str], with_vectors: bool = True) -> dict[str, CatalogItem]:
        """The stored products among `product_ids`, by id; without vectors their `vector` is empty."""

    async def thumbnail(self, product_id: str) -> bytes | None:
        """The product's stored JPEG thumbnail, b"" if it was stored without one, None if it is not stored."""

    async def existing_categories(self, categories: Sequence[str]) -> set[str]:
        """The categories among `categories` that at least one product has."""

    async def count(self) -> int:
        """Number of products in the collection."""

    async def optimize(self) -> bool:
        """Build the search index after bulk ingestion; True if anything changed (a Qdrant server builds its
        own, so its store does nothing)."""

    async def ping(self) -> None:
        """Raise Unavailable if the store cannot answer."""

    async def close(self) -> None:
        """Release the store's resources."""


@functools.lru_cache(maxsize=65_536)
def point_uuid(product_id: str) -> uuid.UUID:
    """The Qdrant point id of a product: a UUID derived from its id, so upserts are idempotent (cached: every
    search excluding a shopper's views derives them). The embedded engine takes and returns UUID objects, which
    cross into it at half the cost of their text."""
    return uuid.uuid5(_POINT_ID_NAMESPACE, product_id)


@functools.lru_cache(maxsize=65_536)
def point_id(product_id: str) -> str:
    """The point id of a product as text, as Qdrant's API takes and returns it."""
    return str(point_uuid(product_id))


def point_ids(product_ids: Iterable[str], as_point: Callable[[str], PointKey]) -> list[PointKey]:
    """The point ids of distinct products, as `as_point` makes them (point_id: text, point_uuid: UUID objects)."""
    return [as_point(product_id) for product_id in dict.fromkeys(product_ids)]


def similarity_targets(queries: Sequence[SimilarityQuery], dim: int, as_point: Callable[[str], PointKey]
                       ) -> list[SimilarityTarget[PointKey]]:
    """The target of each query that names products, its point ids made by `as_point`; queries that name the same
    products share one mapping (a request's views all score the same candidates), so adapters build each id
    filter once."""
    shared: dict[tuple[str, ...], dict[PointKey, str]] = {}
    targets = []
    for vector, product_ids in queries:
        if product_ids:
            key = tuple(product_ids)
            if key not in shared:
                shared[key] = {as_point(product_id): product_id for product_id in product_ids}
            targets.append((shared[key], checked_vector(vector, dim)))
    return targets


def similarities_by_query(queries: Sequence[SimilarityQuery], targets: Sequence[SimilarityTarget[PointKey]],
                          answers: Iterable[Iterable[tuple[PointKey, float]]]) -> list[dict[str, float]]:
    """The engine's (point id, score) answers to `targets`, ids as the targets hold them, as one {product id: score}
    per query; {} for a query that named no product."""
    found = iter([{by_point[point]: score for point, score in answer}
                  for (by_point, _), answer in zip(targets, answers, strict=True)])
    return [next(found) if product_ids else {} for _, product_ids in queries]


def payload_of(item: CatalogItem) -> dict[str, Any]:
    """The point payload stored for a product."""
    payload = {"product_id": item.product_id, CATEGORY_FIELD: item.category, ATTRIBUTES_FIELD: dict(item.attributes),
               NUMBERS_FIELD: numeric_attributes(item.attributes)}
    if item.thumbnail:
        payload[THUMBNAIL_FIELD] = base64.b64encode(item.thumbnail).decode("ascii")
    return payload


def numeric_attributes(attributes: Mapping[str, str]) -> dict[str, float]:
    """The attributes whose value is a finite decimal number ("19.99", "-3", "1e3"), as numbers."""
    return {name: float(value) for name, value in attributes.items()
            if _DECIMAL.fullmatch(value) and math.isfinite(float(value))}


def attribute_key(field: str, name: str) -> str:
    """The engine's path to attribute `name` in the payload object `field`; quoted, as names may hold dots (names
    with a double quote or backslash cannot be quoted: requests are refused before they get here)."""
    return f'{field}."{name}"'


def value_conditions(where: ProductFilter) -> list[tuple[str, list[str]]]:
    """(payload key, allowed values) of each exact-match condition of a filter, categories first."""
    conditions = [(CATEGORY_FIELD, list(where.categories))] if where.categories else []
    return conditions + [(attribute_key(ATTRIBUTES_FIELD, each.name), list(each.values)) for each in where.attributes]


def excluded_conditions(where: ProductFilter) -> list[tuple[str, list[str]]]:
    """(payload key, values) of each exact-match condition a product must not meet, categories first."""
    conditions = [(CATEGORY_FIELD, list(where.excluded_categories))] if where.excluded_categories else []
    return conditions + [(attribute_key(ATTRIBUTES_FIELD, each.name), list(each.values))
                         for each in where.excluded_attributes]


def range_conditions(where: ProductFilter) -> list[tuple[str, float | None, float | None]]:
    """(payload key, lowest, highest) of each numeric range condition of a filter."""
    return [(attribute_key(NUMBERS_FIELD, each.name), each.minimum, each.maximum) for each in where.ranges]


def thumbnail_from_payload(payload: Mapping[str, Any] | None) -> bytes:
    """The thumbnail in a payload read with THUMBNAIL_FIELD, b"" when the product has none."""
    return base64.b64decode((payload or {}).get(THUMBNAIL_FIELD, ""))


def item_from_point(payload: Mapping[str, Any] | None, vector: object) -> CatalogItem:
    """A catalog item from a stored point's payload and vector (a list of floats, or None when not read)."""
    if payload is None:
        raise ValueError("catalog points are always read with their payload")
    return CatalogItem(
        product_id=payload["product_id"],
        category=payload[CATEGORY_FIELD],
        vector=_NO_VECTOR if vector is None else np.asarray(vector, dtype=np.float32),
        attributes=payload[ATTRIBUTES_FIELD],
        neighbour_similarity=float(payload.get(NEIGHBOUR_FIELD, 0.0)),
    )


def checked_vector(vector: np.ndarray, dim: int) -> list[float]:
    """The vector as a list of floats, after checking it is a finite, non-zero vector of `dim` numbers."""
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise InvalidArgument(f"embedding has shape {array.shape}; the catalog holds vectors of {dim}")
    if not np.isfinite(array).all():
        raise InvalidArgument("embedding contains NaN or infinite values")
    if not array.any():
        raise InvalidArgument("embedding is all zeros; cosine similarity is undefined for it")
    return array.tolist()


def checked_items(items: Sequence[CatalogItem], dim: int) -> list[tuple[str, list[float], dict[str, Any]]]:
    """(point id, vector, payload) of each item, after checking its product id and vector."""
    points = []
    for item in items:
        if not item.product_id:
            raise InvalidArgument("catalog item has an empty product_id")
        points.append((point_id(item.product_id), checked_vector(item.vector, dim), payload_of(item)))
    return points


def check_limit(limit: int) -> None:
    """Raise InvalidArgument unless `limit` asks for at least one result."""
    if limit < 1:
        raise InvalidArgument(f"limit must be at least 1, got {limit}")


def filters_of(searches: Sequence[Search], build: Callable[[ProductFilter, Sequence[str]], T]) -> list[T]:
    """Each search's engine filter made by `build`, after checking its limit; searches with the same filter and
    exclusions share one (a batch's searches mostly do)."""
    built: dict[tuple[ProductFilter, tuple[str, ...]], T] = {}
    for search in searches:
        check_limit(search.limit)
        key = (search.where, search.exclude_ids)
        if key not in built:
            built[key] = build(search.where, search.exclude_ids)
    return [built[(search.where, search.exclude_ids)] for search in searches]


def indexing_threshold_kb(dim: int, points: int) -> int:
    """Qdrant's indexing threshold: the KiB of vectors from which a segment of `points` gets an HNSW index."""
    return max(1, points * dim * 4 // 1024)


def model_record(model: ModelInfo) -> dict[str, Any]:
    """The JSON-able record of the embedding model a collection is built with."""
    return asdict(model)


def model_from_record(record: object) -> ModelInfo | None:
    """The model in a record written by `model_record`, or None if the record is missing or malformed."""
    try:
        return ModelInfo(**record) if isinstance(record, dict) else None
    except TypeError:
        return None


def ensure_built_with(recorded: ModelInfo | None, model: ModelInfo, catalog: str, reset_hint: str) -> None:
    """Raise FailedPrecondition, saying how to re-index, unless the catalog was built with `model`."""
    if recorded == model:
        return
    built_with = (
        "an unknown embedding model (its model record is missing or unreadable)"
        if recorded is None
        else f"embedding model {recorded} of dimension {recorded.dim}"
    )
    raise FailedPrecondition(
        f"The catalog {catalog} was built with {built_with}, but this gateway serves {model} of dimension "
        f"{model.dim}. Re-index the catalog with the served model: run {REINDEX_COMMAND}, or {reset_hint} "
        "and run `make index`."
    )


def read_json(path: Path) -> object:
    """The JSON value in `path`, or None if the file does not exist or is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json_atomically(path: Path, value: object) -> None:
    """Write `value` as JSON to `path` so that readers see either the old or the complete new file."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        json.dump(value, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
