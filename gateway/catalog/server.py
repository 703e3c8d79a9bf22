"""The catalog in a Qdrant collection reached through qdrant-client's async API (a server, or local mode)."""

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import grpc
import httpx
import numpy as np
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from gateway.catalog.store import (
    CATEGORY_FIELD,
    EXACT_SEARCH_MAX_POINTS,
    ITEM_FIELDS,
    NEIGHBOUR_FIELD,
    THUMBNAIL_FIELD,
    Search,
    SimilarityQuery,
    SimilarityTarget,
    checked_items,
    checked_vector,
    ensure_built_with,
    excluded_conditions,
    filters_of,
    indexing_threshold_kb,
    item_from_point,
    model_from_record,
    model_record,
    point_id,
    point_ids,
    range_conditions,
    similarities_by_query,
    similarity_targets,
    thumbnail_from_payload,
    value_conditions,
)
from gateway.domain import (
    EVERY_PRODUCT,
    CatalogItem,
    FailedPrecondition,
    ModelInfo,
    Neighbour,
    ProductFilter,
    ResourceExhausted,
    Unavailable,
)

# The collection metadata key holding the embedding model's record.
MODEL_METADATA_KEY = "embedding_model"


class QdrantClientCatalog:
    """Catalog in the Qdrant collection `collection`, with the model recorded in the collection's metadata.

    Qdrant decides how to search: segments stay unindexed, and are scanned exactly, until they hold
    `exact_search_max_points` vectors; larger ones get an HNSW index from the server's optimizer.
    Transport failures raise Unavailable; a missing collection raises FailedPrecondition.
    """

    def __init__(
        self,
        client: AsyncQdrantClient,
        collection: str = "products",
        *,
        exact_search_max_points: int = EXACT_SEARCH_MAX_POINTS,
    ) -> None:
        self._client = client
        self.collection = collection
        self._exact_search_max_points = exact_search_max_points
        self._model: ModelInfo | None = None

    async def open(self, model: ModelInfo) -> None:
        """Create the collection for `model` if missing, else check it was built with `model`."""
        with self._server_errors():
            if await self._client.collection_exists(self.collection):
                info = await self._client.get_collection(self.collection)
                metadata = info.config.metadata or {}
                recorded = model_from_record(metadata.get(MODEL_METADATA_KEY))
                ensure_built_with(
                    recorded,
                    model,
                    f"in the Qdrant collection '{self.collection}'",
                    f"delete the collection '{self.collection}'",
                )
            else:
                await self._create_collection(model)
        self._model = model

    async def drop(self) -> None:
        """Delete the collection, so that the next `open` starts an empty catalog."""
        with self._server_errors():
            await self._client.delete_collection(self.collection)

    async def upsert(self, items: Sequence[CatalogItem]) -> None:
        """Insert or replace products by product id; acknowledged by Qdrant when this returns."""
        if not items:
            return
        points = await asyncio.to_thread(_points, items, self._opened().dim)
        with self._server_errors():
            await self._client.upsert(self.collection, points, wait=True)

    async def delete(self, product_ids: Sequence[str]) -> int:
        """Delete products; returns how many of them existed (not atomic against concurrent writers)."""
        if not product_ids:
            return 0
        with self._server_errors():
            existing = await self._client.retrieve(
                self.collection, point_ids(product_ids, point_id), with_payload=False, with_vectors=False
            )
            if existing:
                selector = models.PointIdsList(points=[record.id for record in existing])
                await self._client.delete(self.collection, selector, wait=True)
        return len(existing)

    async def search(
        self,
        vector: np.ndarray,
        limit: int,
        where: ProductFilter = EVERY_PRODUCT,
        exclude_ids: Sequence[str] = (),
    ) -> list[Neighbour]:
        """The `limit` products most cosine-similar to `vector`, best first, without their vectors."""
        return (await self.search_batch([Search(vector, limit, where, tuple(exclude_ids))]))[0]

    async def search_batch(self, searches: Sequence[Search]) -> list[list[Neighbour]]:
        """The answer of each search, each under its own limit and filter; they go to the server as one batch."""
        filters = filters_of(searches, _filter)
        if not searches:
            return []
        dim = self._opened().dim
        requests = [
            models.QueryRequest(query=checked_vector(search.vector, dim), filter=search_filter, limit=search.limit,
                                with_payload=ITEM_FIELDS, with_vector=False)
            for search, search_filter in zip(searches, filters, strict=True)
        ]
        with self._server_errors():
            responses = await self._client.query_batch_points(self.collection, requests)
        return [[Neighbour(item_from_point(hit.payload, None), hit.score) for hit in response.points]
                for response in responses]

    async def set_neighbour_similarities(self, values: Mapping[str, float]) -> None:
        """Store each product's mean cosine similarity to its nearest neighbours; products not stored are
        skipped."""
        if not values:
            return
        with self._server_errors():
            stored = {str(record.id) for record in await self._client.retrieve(
                self.collection, point_ids(values, point_id), with_payload=False, with_vectors=False)}
            operations = [
                models.SetPayloadOperation(set_payload=models.SetPayload(payload={NEIGHBOUR_FIELD: value},
                                                                         points=[point_id(product_id)]))
                for product_id, value in values.items() if point_id(product_id) in stored
            ]
            if operations:
                await self._client.batch_update_points(self.collection, operations, wait=True)

    async def similarities(self, queries: Sequence[SimilarityQuery]) -> list[dict[str, float]]:
        """For each (vector, product ids) query, the cosine similarity to its vector of each stored product among
        its ids, by id; the queries go to the server as one batch."""
        dim = self._opened().dim
        targets: list[SimilarityTarget[models.ExtendedPointId]] = similarity_targets(queries, dim, point_id)
        if not targets:
            return [{} for _ in queries]
        requests = [
            models.QueryRequest(
                query=vector,
                filter=models.Filter(must=[models.HasIdCondition(has_id=list(by_point))]),
                params=models.SearchParams(exact=True),
                limit=len(by_point),
                with_payload=False,
                with_vector=False,
            )
            for by_point, vector in targets
        ]
        with self._server_errors():
            responses = await self._client.query_batch_points(self.collection, requests)
        answers = ([(hit.id, hit.score) for hit in response.points] for response in responses)
        return similarities_by_query(queries, targets, answers)

    async def retrieve(self, product_ids: Sequence[str], with_vectors: bool = True) -> dict[str, CatalogItem]:
        """The stored products among `product_ids`, by id; without vectors their `vector` is empty."""
        if not product_ids:
            return {}
        with self._server_errors():
            records = await self._client.retrieve(
                self.collection, point_ids(product_ids, point_id), with_payload=ITEM_FIELDS, with_vectors=with_vectors
            )
        items = (item_from_point(record.payload, record.vector) for record in records)
        return {item.product_id: item for item in items}

    async def thumbnail(self, product_id: str) -> bytes | None:
        """The product's stored JPEG thumbnail, b"" if it was stored without one, None if it is not stored."""
        with self._server_errors():
            records = await self._client.retrieve(
                self.collection, [point_id(product_id)], with_payload=[THUMBNAIL_FIELD], with_vectors=False
            )
        return thumbnail_from_payload(records[0].payload) if records else None

    async def existing_categories(self, categories: Sequence[str]) -> set[str]:
        """The categories among `categories` that at least one product has."""
        if not categories:
            return set()
        with self._server_errors():
            response = await self._client.facet(self.collection, CATEGORY_FIELD,
                                                facet_filter=_filter(ProductFilter(tuple(categories)), ()),
                                                limit=len(categories), exact=True)
        return {str(hit.value) for hit in response.hits}

    async def count(self) -> int:
        """Number of products in the collection."""
        with self._server_errors():
            return (await self._client.count(self.collection, exact=True)).count

    async def optimize(self) -> bool:
        return False  # the server indexes as its optimizer decides

    async def ping(self) -> None:
        """Raise Unavailable if Qdrant does not answer (FailedPrecondition if the collection is gone)."""
        with self._server_errors():
            await self._client.count(self.collection, exact=False)

    async def close(self) -> None:
        """Close the client."""
        await self._client.close()

    async def _create_collection(self, model: ModelInfo) -> None:
        await self._client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=model.dim, distance=models.Distance.COSINE),
            optimizers_config=models.OptimizersConfigDiff(
                indexing_threshold=indexing_threshold_kb(model.dim, self._exact_search_max_points)
            ),
            metadata={MODEL_METADATA_KEY: model_record(model)},
        )
        await self._client.create_payload_index(
            self.collection, CATEGORY_FIELD, models.PayloadSchemaType.KEYWORD, wait=True
        )

    def _opened(self) -> ModelInfo:
        if self._model is None:
            raise Unavailable(f"The catalog in the Qdrant collection '{self.collection}' is not open")
        return self._model

    @contextmanager
    def _server_errors(self) -> Iterator[None]:
        """Turn qdrant-client's transport and server errors into the domain's errors."""
        try:
            yield
        except ResourceExhaustedResponse as error:
            raise ResourceExhausted(f"Qdrant is rate limiting requests; retry later: {error}") from error
        except UnexpectedResponse as error:
            if error.status_code == 404:
                raise FailedPrecondition(
                    f"The Qdrant collection '{self.collection}' does not exist; build it with `make index`"
                ) from error
            raise Unavailable(
                f"Qdrant answered HTTP {error.status_code} {error.reason_phrase}: "
                f"{error.content[:500].decode(errors='replace')}"
            ) from error
        except (ResponseHandlingException, httpx.TransportError, grpc.RpcError, OSError) as error:
            cause = error.source if isinstance(error, ResponseHandlingException) else error
            raise Unavailable(
                "Qdrant cannot be reached (check QDRANT_URL and that the server is up): "
                f"{type(cause).__name__}: {cause}"
            ) from error


def _points(items: Sequence[CatalogItem], dim: int) -> list[models.PointStruct]:
    """The Qdrant points of catalog items, after checking them."""
    return [
        models.PointStruct(id=id_, vector=vector, payload=payload)
        for id_, vector, payload in checked_items(items, dim)
    ]


def _filter(where: ProductFilter, exclude_ids: Sequence[str]) -> models.Filter | None:
    """The Qdrant filter keeping the products `where` allows and dropping `exclude_ids`."""
    must: list[models.Condition] = [models.FieldCondition(key=key, match=models.MatchAny(any=values))
                                    for key, values in value_conditions(where)]
    must += [models.FieldCondition(key=key, range=models.Range(gte=low, lte=high))
             for key, low, high in range_conditions(where)]
    must_not: list[models.Condition] = [models.FieldCondition(key=key, match=models.MatchAny(any=values))
                                        for key, values in excluded_conditions(where)]
    if exclude_ids:
        must_not.append(models.HasIdCondition(has_id=point_ids(exclude_ids, point_id)))
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)
