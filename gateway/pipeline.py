"""The recommendation data plane: decode → embed ‖ (history → taste search) → search → (similarities ‖
popularity) → re-rank, each stage with a deadline."""

import asyncio
import copy
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from ranker import (
    NO_RULES,
    NO_TASTE,
    Boost,
    Candidate,
    HistoryItem,
    Ranked,
    Reason,
    Rules,
    Taste,
    Weights,
    diversify,
    rerank,
    taste_of,
)
from ranker.rules import CATEGORY_KEY, key_value

from .admission import Admission
from .batching import Coalescer
from .config import Settings
from .domain import (
    EVERY_PRODUCT,
    AttributeValues,
    CatalogItem,
    DeadlineExceeded,
    Feedback,
    InvalidArgument,
    Neighbour,
    NotFound,
    ProductFilter,
    RecsysError,
    ShopperRecord,
    Unavailable,
)
from .experiments import Experiments, label_of
from .images import preprocess
from .item_cache import ItemCache
from .metrics import Metrics
from .ports import CatalogStore, Embedder, HistoryStore, Search, SimilarityQuery
from .validation import check_filter, check_id, check_id_count, check_rules

log = logging.getLogger(__name__)
T = TypeVar("T")
# Maximal marginal relevance re-orders the best this many times the products asked for.
MMR_POOL_FACTOR = 3
# A grouped list whose candidates hold too few groups searches again, without the full groups, at most this often.
GROUP_SEARCHES = 3


@dataclass(frozen=True)
class RecommendQuery:
    """What to recommend from (an image, a catalog product, or neither: the user's history alone), which products
may be recommended, the business rules and diversity of the list, and the experiment arm asked for."""

    user_id: str = ""
    image: bytes | None = None
    product_id: str | None = None
    limit: int = 0
    where: ProductFilter = EVERY_PRODUCT
    diversity: "Diversity | None" = None
    rules: Rules = NO_RULES
    experiment: str = ""


@dataclass(frozen=True)
class Diversity:
    """How a list trades score for variety: maximal marginal relevance (None: RANK_MMR_LAMBDA), and at most
    `max_per_group` items per value of `group_by` (CATEGORY_KEY or an attribute name; empty: no grouping)."""

    mmr_lambda: float | None = None
    group_by: str = ""
    max_per_group: int = 0


@dataclass(frozen=True)
class Recommended:
    """One recommended product with the parts of its score and the reasons it is there."""

    product_id: str
    category: str
    attributes: dict[str, str]
    score: float
    visual_score: float
    history_score: float
    category_score: float
    popularity_score: float
    dismissal_score: float
    rules_score: float
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Recommendations:
    """A list, the model that embedded it, the stages skipped, and the experiment arm that ranked it."""

    items: list[Recommended]
    model: str
    degraded: tuple[str, ...] = field(default=())
    experiment: str = ""


@dataclass(frozen=True)
class RankingInputs:
    """What the ranker ranks for a query: the candidates with every similarity, the shopper's taste, the
    candidates' attributes, and the stages skipped."""

    candidates: list[Candidate]
    taste: Taste
    attributes: dict[str, Mapping[str, str]]
    degraded: tuple[str, ...]


@dataclass(frozen=True)
class _Shopper:
    """What a shopper's record gives a query: their taste with the vectors of its views, the vectors of their
    dismissed products, the searches around their recent views (and, without another query, around their taste
    vector first), the products to leave out, and whether Redis failed."""

    taste: Taste
    view_vectors: list[np.ndarray]
    dismissed_vectors: list[np.ndarray]
    hits: list[list[Neighbour]]
    excluded: set[str]
    degraded: tuple[str, ...]


_ANONYMOUS = _Shopper(NO_TASTE, [], [], [], set(), ())


def boosted_filter(where: ProductFilter, boost: Boost) -> ProductFilter | None:
    """The products `where` allows that `boost` matches; None when there can be none."""
    if boost.key != CATEGORY_KEY:
        return replace(where, attributes=(*where.attributes, AttributeValues(boost.key, tuple(sorted(boost.values)))))
    categories = tuple(c for c in where.categories if c in boost.values) if where.categories else tuple(boost.values)
    return replace(where, categories=tuple(sorted(categories))) if categories else None


def excluded_ids(product_ids: set[str]) -> tuple[str, ...]:
    """The products a search leaves out, in a stable order (searches with the same ones share a filter)."""
    return tuple(sorted(product_ids))


def group_of(key: str, product_id: str, category: str, attributes: Mapping[str, str]) -> str:
    """A product's diversity group: its value of `key`, or without one a group of its own."""
    return key_value(key, category, attributes) or f"\0{product_id}"


def excluding_groups(where: ProductFilter, key: str, groups: Sequence[str]) -> ProductFilter:
    """`where` without the products whose value of `key` is one of `groups`."""
    if key == CATEGORY_KEY:
        return replace(where, excluded_categories=(*where.excluded_categories, *groups))
    return replace(where, excluded_attributes=(*where.excluded_attributes, AttributeValues(key, tuple(groups))))


class Pipeline:
    """Serves recommendations and view history over injected embedder, catalog and history stores."""

    def __init__(self, embedder: Embedder, catalog: CatalogStore, history: HistoryStore,
                 settings: Settings, metrics: Metrics, decode_pool: Executor) -> None:
        self.embedder = embedder
        self.catalog = catalog
        self.history = history
        self._settings = settings
        self._metrics = metrics
        self._decode_pool = decode_pool
        self._weights = settings.weights
        self._experiments = settings.experiments
        for arm in self._experiments.arms:  # exported from the start, so per-arm rates exist before the first list
            metrics.recommendations.labels(arm.name)
        self._image_work = Admission("image queries", settings.max_concurrent_images, metrics.in_flight)
        self._items = self._item_cache()
        self._batch_catalog_calls()

    def _batch_catalog_calls(self) -> None:
        """The catalog's batch calls, combined across concurrent requests within SEARCH_BATCH_WINDOW_MS."""
        window_s = self._settings.search_batch_window_ms / 1000
        observe = self._metrics.catalog_batch_queries.observe
        self._searches = Coalescer(self._catalog_searches, window_s, observe)
        self._similarities = Coalescer(self._catalog_similarities, window_s, observe)

    # Through `self.catalog` at each call, so that the batches follow the catalog this pipeline holds.
    async def _catalog_searches(self, searches: list[Search]) -> list[list[Neighbour]]:
        return await self.catalog.search_batch(searches)

    async def _catalog_similarities(self, queries: list[SimilarityQuery]) -> list[dict[str, float]]:
        return await self.catalog.similarities(queries)

    def with_backends(self, embedder: Embedder, catalog: CatalogStore) -> "Pipeline":
        """This pipeline over another embedder and catalog (a model rollout), sharing everything else."""
        switched = copy.copy(self)
        switched.embedder, switched.catalog = embedder, catalog
        switched._items = self._item_cache()  # another catalog holds other vectors
        switched._batch_catalog_calls()
        return switched

    def with_weights(self, weights: Weights) -> "Pipeline":
        """This pipeline ranking with other weights (an experiment, a tuning), sharing everything else."""
        switched = copy.copy(self)
        switched._weights = weights
        return switched

    def with_experiments(self, experiments: Experiments) -> "Pipeline":
        """This pipeline running other experiment arms, sharing everything else."""
        switched = copy.copy(self)
        switched._experiments = experiments
        return switched

    def searching_around_the_query_only(self) -> "Pipeline":
        """This pipeline without the searches around the shopper's recent views (RANK_SEARCH_VIEWS 0): what they add
        is measured against it."""
        switched = copy.copy(self)
        switched._settings = self._settings.model_copy(update={"rank_search_views": 0})
        return switched

    def _item_cache(self) -> ItemCache:
        return ItemCache(self._settings.item_cache_size, self._settings.item_cache_ttl_s)

    async def recommend(self, query: RecommendQuery, budget_s: float | None = None) -> Recommendations:
        """Recommendations for a query within budget_s seconds (capped by the configured request timeout), ranked
        with the weights of the query's experiment arm."""
        limit = self._checked(query)
        arm = self._experiments.arm(query.user_id, query.experiment)
        ranking = self.with_weights(arm.weights) if arm else self
        budget = min(budget_s or self._settings.request_timeout_s, self._settings.request_timeout_s)
        with self._metrics.stage("total"):
            try:
                async with asyncio.timeout(budget):
                    result = await ranking._recommend(query, limit)
            except TimeoutError:
                raise DeadlineExceeded(f"recommendation did not finish within its deadline of {budget:.3f} s") from None
        self._metrics.recommendations.labels(label_of(arm)).inc()
        return replace(result, experiment=arm.name if arm else "")

    def _checked(self, query: RecommendQuery) -> int:
        """The query's list length, after checking its filter and rules."""
        limit = self._limit(query.limit)
        check_filter(query.where)
        check_rules(query.rules)
        return limit

    async def _recommend(self, query: RecommendQuery, limit: int) -> Recommendations:
        diversity = self._diversity(query.diversity)
        inputs = await self._ranking_inputs(query, limit, diversity)
        with self._metrics.stage("rerank"):
            ranked = rerank(inputs.candidates, inputs.taste, self._weights, None if diversity else limit)
        if diversity:
            ranked = await self._diversified(ranked, inputs, diversity, limit)
        items = [Recommended(r.product_id, r.category, dict(inputs.attributes[r.product_id]), r.score, r.visual_score,
                             r.history_score, r.category_score, r.popularity_score, r.dismissal_score, r.rules_score,
                             r.reasons)
                 for r in ranked]
        for stage in inputs.degraded:
            self._metrics.degraded.labels(stage).inc()
        return Recommendations(items, str(self.embedder.info), inputs.degraded)

    async def ranking_inputs(self, query: RecommendQuery) -> RankingInputs:
        """The candidates and taste `recommend` ranks for a query, to rank them offline under other weights (the
        evaluation's tuning); popularity is read when this pipeline's popularity weight is not 0."""
        return await self._ranking_inputs(query, self._checked(query), self._diversity(query.diversity))

    def _diversity(self, requested: Diversity | None) -> Diversity | None:
        """The request's diversity with the default lambda filled in, checked; None when it changes nothing."""
        diversity = requested or Diversity()
        mmr_lambda = self._settings.rank_mmr_lambda if diversity.mmr_lambda is None else diversity.mmr_lambda
        if not (math.isfinite(mmr_lambda) and 0.0 < mmr_lambda <= 1.0):
            raise InvalidArgument(f"diversity.mmr_lambda is {mmr_lambda}; it must be in 0..1, 0 excluded")
        if diversity.group_by:
            check_id("diversity.group_by", diversity.group_by)
            if diversity.max_per_group > self._settings.max_limit:
                raise InvalidArgument(f"diversity.max_per_group is {diversity.max_per_group}; the maximum is "
                                      f"{self._settings.max_limit}")
        elif diversity.max_per_group:
            raise InvalidArgument("diversity.max_per_group needs diversity.group_by")
        if mmr_lambda == 1.0 and not diversity.group_by:
            return None
        return Diversity(mmr_lambda, diversity.group_by, max(diversity.max_per_group, 1))

    async def _diversified(self, ranked: list[Ranked], inputs: RankingInputs, diversity: Diversity, limit: int
                           ) -> list[Ranked]:
        """The top `limit` under `diversity`; maximal marginal relevance considers the best
        MMR_POOL_FACTOR x `limit` products, whose vectors it reads."""
        mmr_lambda = diversity.mmr_lambda or 1.0
        vectors = None
        if mmr_lambda < 1.0:
            ranked = ranked[:MMR_POOL_FACTOR * limit]
            found = await self._within("catalog lookup", self._settings.search_timeout_s,
                                       self.catalog.retrieve([r.product_id for r in ranked]))
            ranked = [r for r in ranked if r.product_id in found]  # deleted since the search
            vectors = np.array([found[r.product_id].vector for r in ranked]).reshape(len(ranked), -1)
        groups = None
        if diversity.group_by:
            groups = [group_of(diversity.group_by, r.product_id, r.category, inputs.attributes[r.product_id])
                      for r in ranked]
        return diversify(ranked, limit, vectors, mmr_lambda, groups, diversity.max_per_group)

    def _pool(self, limit: int) -> int:
        """How many products the visual search returns for a list of `limit`."""
        return max(limit * self._settings.oversample, self._settings.min_candidates)

    async def _ranking_inputs(self, query: RecommendQuery, limit: int, diversity: Diversity | None) -> RankingInputs:
        pool = self._pool(limit)
        await self._check_categories_exist(query.where.categories)
        queried_product = query.product_id if query.image is None else None
        queried = {check_id("product_id", queried_product)} if queried_product is not None else set()
        history_only = query.image is None and query.product_id is None
        shopper_task: asyncio.Task[_Shopper] | None = None

        def start_shopper() -> None:
            nonlocal shopper_task
            if query.user_id:
                shopper_task = asyncio.create_task(
                    self._shopper(query.user_id, pool, query.where, queried, history_only))
        try:
            vector = await self._query_vector(query, start_shopper)
            shopper = await shopper_task if shopper_task else _ANONYMOUS
        finally:
            if shopper_task:
                shopper_task.cancel()  # no effect once it is done
        view_hits = shopper.hits
        if vector is None:
            if shopper.degraded:
                raise Unavailable("history store (Redis) is unavailable, and the query has no image or product_id")
            if shopper.taste.vector is None:
                raise InvalidArgument("nothing to recommend from: send an image or a product_id, "
                                      "or a user_id that has recorded views")
            vector, visual_hits, view_hits = shopper.taste.vector, shopper.hits[0], shopper.hits[1:]
        else:
            visual_hits = []
        excluded = excluded_ids(queried | shopper.excluded)
        searches = [Search(vector, pool, query.where, excluded)] if not history_only else []
        searches += [Search(vector, pool, boosted, excluded)  # the boosted products nearest the query compete too
                     for boosted in filter(None, (boosted_filter(query.where, boost) for boost in query.rules.boosts
                                                  if boost.weight > 0))]
        visual_hits = visual_hits + [hit for hits in await self._search_batch(searches) for hit in hits]
        if diversity and diversity.group_by:
            visual_hits = await self._more_groups(vector, limit, query.where, diversity, visual_hits,
                                                  queried | shopper.excluded)
        items = {hit.item.product_id: hit.item for hits in [visual_hits, *view_hits] for hit in hits}
        (visual, to_views, to_dismissed), (popularity, popularity_degraded) = await asyncio.gather(
            self._similarities_to(vector, visual_hits, shopper, list(items)),
            self._popularity(list(items), bool(shopper.taste.viewed)))
        candidates, now_s = [], time.time()
        for product_id, item in items.items():
            view_similarities = tuple(answer[product_id] for answer in to_views if product_id in answer)
            if product_id not in visual or len(view_similarities) != len(to_views):
                continue  # deleted between the searches
            dismissal = max((answer.get(product_id, -1.0) for answer in to_dismissed), default=-1.0)
            candidates.append(Candidate(product_id, item.category, visual[product_id], view_similarities,
                                        item.neighbour_similarity, dismissal, popularity[product_id],
                                        query.rules.scores(item.category, item.attributes, now_s)))
        attributes = {product_id: item.attributes for product_id, item in items.items()}
        return RankingInputs(candidates, shopper.taste, attributes, shopper.degraded + popularity_degraded)

    async def _more_groups(self, vector: np.ndarray, limit: int, where: ProductFilter, diversity: Diversity,
                           hits: list[Neighbour], excluded: set[str]) -> list[Neighbour]:
        """`hits` and, while their groups cannot fill a list of `limit` under the group cap, at most GROUP_SEARCHES
        more searches that leave out the groups already full (Qdrant's grouped search does the same)."""
        for _ in range(GROUP_SEARCHES):
            counts = Counter(group_of(diversity.group_by, hit.item.product_id, hit.item.category, hit.item.attributes)
                             for hit in hits)
            if sum(min(count, diversity.max_per_group) for count in counts.values()) >= limit:
                break
            full = sorted(group for group, count in counts.items()
                          if count >= diversity.max_per_group and not group.startswith("\0"))
            [more] = await self._search_batch([Search(vector, self._pool(limit),
                                                      excluding_groups(where, diversity.group_by, full),
                                                      excluded_ids(excluded | {hit.item.product_id for hit in hits}))])
            if not more:
                break
            hits = hits + more
        return hits

    def _limit(self, requested: int) -> int:
        if requested == 0:
            return self._settings.default_limit
        if requested > self._settings.max_limit:
            raise InvalidArgument(f"limit is {requested}; the maximum is {self._settings.max_limit}")
        return requested

    async def _query_vector(self, query: RecommendQuery, start_shopper: Callable[[], None]) -> np.ndarray | None:
        """The query's vector; `start_shopper` is called once, as soon as the query's own CPU work is done (after the
        image decode), so that the shopper's history is read while Triton embeds without slowing the decode: the
        embedded catalog holds the GIL while it searches."""
        if query.image is not None:
            return await self.embed_image(query.image, start_shopper)
        start_shopper()
        if query.product_id is not None:
            return (await self._product(query.product_id)).vector
        return None

    async def embed_image(self, data: bytes, decoded: Callable[[], None]) -> np.ndarray:
        """The embedding of one encoded image: decoded in the pool (then `decoded` is called), embedded by Triton;
        with an embedder that decodes (IMAGE_PREPROCESSING=triton), sent to Triton as it is.

        At most `max_concurrent_images` run at once; past that ResourceExhausted, so that the images
        admitted keep their latency and queries without an image are not held up behind them.
        """
        with self._image_work.slot():
            if self.embedder.decodes:
                decoded()
                with self._metrics.stage("embed"):
                    return await self.embedder.embed_encoded(data, self._settings.image_limits,
                                                             self._settings.embed_timeout_s)
            with self._metrics.stage("decode"):
                pixels = await asyncio.get_running_loop().run_in_executor(
                    self._decode_pool, preprocess, data, self._settings.image_limits)
            decoded()
            with self._metrics.stage("embed"):
                return (await self.embedder.embed(pixels[np.newaxis], self._settings.embed_timeout_s))[0]

    async def _check_categories_exist(self, categories: Sequence[str]) -> None:
        if not categories:
            return
        present = await self._within("catalog category check", self._settings.search_timeout_s,
                                     self.catalog.existing_categories(categories))
        unknown = [category for category in dict.fromkeys(categories) if category not in present]
        if unknown:
            raise InvalidArgument(f"filter.categories: no catalog product is in {', '.join(map(repr, unknown))}; "
                                  "check the category names")

    async def _product(self, product_id: str) -> CatalogItem:
        found = await self._within("catalog lookup", self._settings.search_timeout_s,
                                   self.catalog.retrieve([product_id]))
        if product_id not in found:
            raise NotFound(f"product {product_id!r} is not in the catalog")
        self._items.put(found.values())  # a product just viewed is in the viewer's next recommendations' history
        return found[product_id]

    async def _record(self, user_id: str) -> tuple[ShopperRecord, tuple[str, ...]]:
        """The user's views and dismissals, or none and a 'history' degradation if Redis fails or is slow."""
        check_id("user_id", user_id)
        with self._metrics.stage("history"):
            try:
                async with asyncio.timeout(self._settings.history_timeout_s):
                    return await self.history.shopper(user_id), ()
            except (Unavailable, TimeoutError) as error:
                log.warning("history skipped: %s", error or "timed out")
                return ShopperRecord([], []), ("history",)

    async def _shopper(self, user_id: str, pool: int, where: ProductFilter, queried: set[str],
                       history_only: bool) -> _Shopper:
        """The shopper's taste and the searches around their recent views (read while the query image is
        embedded): RANK_SEARCH_VIEWS of the most recent views other than the queried product, RANK_VIEW_POOL
        products each, in one engine batch (for a history-only query, with a search around the taste vector).
        Dismissed products are always left out; viewed ones with RANK_EXCLUDE_VIEWED."""
        record, degraded = await self._record(user_id)
        viewed_ids = list(dict.fromkeys(view.product_id for view in record.views))
        dismissed_ids = list(dict.fromkeys(dismissal.product_id for dismissal in record.dismissals))
        history, dismissed = await asyncio.gather(self._history_items(viewed_ids), self._history_items(dismissed_ids))
        taste = taste_of(history, self._weights.half_life_views)
        view_vectors = {item.product_id: item.vector for item in history}
        excluded = set(dismissed_ids)
        if self._weights.exclude_viewed:
            excluded.update(viewed_ids)
        searched = [view_vectors[view.product_id] for view in taste.views
                    if view.product_id not in queried][:self._settings.rank_search_views]
        left_out = excluded_ids(queried | excluded)
        searches = [Search(taste.vector, pool, where, left_out)] if history_only and taste.vector is not None else []
        searches += [Search(vector, self._settings.rank_view_pool, where, left_out) for vector in searched]
        hits = await self._search_batch(searches)
        return _Shopper(taste, [view_vectors[view.product_id] for view in taste.views],
                        [item.vector for item in dismissed], hits, excluded, degraded)

    async def _popularity(self, product_ids: Sequence[str], history_aware: bool
                          ) -> tuple[dict[str, float], tuple[str, ...]]:
        """Per product its popularity among all shoppers (0..1); all 0 with a 'history' degradation if
        Redis fails or is slow.

        Only a history-aware list uses popularity: an anonymous or new shopper gets the visual order.
        """
        zeros = dict.fromkeys(product_ids, 0.0)
        if not (product_ids and history_aware and self._weights.popularity):
            return zeros, ()
        with self._metrics.stage("popularity"):
            try:
                async with asyncio.timeout(self._settings.history_timeout_s):
                    return dict(zip(product_ids, await self.history.popularity(product_ids), strict=True)), ()
            except (Unavailable, TimeoutError) as error:
                log.warning("popularity skipped: %s", error or "timed out")
                return zeros, ("history",)

    async def _history_items(self, viewed_ids: Sequence[str]) -> list[HistoryItem]:
        found = self._items.get(viewed_ids)
        missing = [product_id for product_id in viewed_ids if product_id not in found]
        if missing:
            read = await self._within("catalog lookup", self._settings.search_timeout_s,
                                      self.catalog.retrieve(missing))
            self._items.put(read.values())
            found |= read
        return [HistoryItem(pid, found[pid].category, found[pid].vector, position)
                for position, pid in enumerate(viewed_ids) if pid in found]

    async def _similarities_to(self, query: np.ndarray, visual_hits: list[Neighbour], shopper: _Shopper,
                               product_ids: list[str]
                               ) -> tuple[dict[str, float], list[dict[str, float]], list[dict[str, float]]]:
        """Each candidate's similarity to the query (the visual search scored its own hits), and to each of the
        shopper's views and dismissed products, by id; one engine batch, reading no vectors. Products deleted
        since the searches are missing."""
        visual = {hit.item.product_id: hit.score for hit in visual_hits}
        unscored = [product_id for product_id in product_ids if product_id not in visual]
        queries = [(query, unscored)] + [(vector, product_ids)
                                         for vector in [*shopper.view_vectors, *shopper.dismissed_vectors]]
        if len(queries) == 1 and not unscored:
            return visual, [], []
        with self._metrics.stage("search"):
            answers = await self._within("catalog similarity", self._settings.search_timeout_s,
                                         self._similarities(queries))
        views = len(shopper.view_vectors)
        return visual | answers[0], answers[1:1 + views], answers[1 + views:]

    async def _search_batch(self, searches: Sequence[Search]) -> list[list[Neighbour]]:
        """The searches' answers, from one engine batch (shared with concurrent requests' searches within
        SEARCH_BATCH_WINDOW_MS)."""
        if not searches:
            return []
        with self._metrics.stage("search"):
            return await self._within("catalog search", self._settings.search_timeout_s,
                                      self._searches(searches))

    @staticmethod
    async def _within(what: str, timeout_s: float, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(timeout_s):
                return await work
        except TimeoutError:
            raise DeadlineExceeded(f"{what} did not answer within {timeout_s:.3f} s") from None

    async def record_feedback(self, user_id: str, product_id: str, feedback: Feedback = Feedback.VIEW) -> None:
        """Records a view, dismissal or purchase of a catalog product; unknown products are refused."""
        check_id("user_id", user_id)
        await self._product(check_id("product_id", product_id))
        await self.history.record(user_id, product_id, int(time.time() * 1000), feedback)
        self._metrics.feedback.labels(label_of(self._experiments.assigned(user_id)), feedback.value).inc()

    async def shopper_record(self, user_id: str) -> ShopperRecord:
        """The user's recent views and dismissals, newest first."""
        return await self.history.shopper(check_id("user_id", user_id))

    async def forget(self, user_id: str) -> None:
        """Removes everything stored about the user."""
        await self.history.forget(check_id("user_id", user_id))

    async def product_image(self, product_id: str) -> bytes:
        """The JPEG thumbnail the catalog stored for a product when it was ingested."""
        check_id("product_id", product_id)
        thumbnail = await self._within("catalog lookup", self._settings.search_timeout_s,
                                       self.catalog.thumbnail(product_id))
        if thumbnail is None:
            raise NotFound(f"product {product_id!r} is not in the catalog")
        if not thumbnail:
            raise NotFound(f"product {product_id!r} was indexed without a picture; ingest it again to store one")
        return thumbnail

    async def delete_products(self, product_ids: Sequence[str]) -> int:
        """Deletes products; returns how many existed."""
        check_id_count("product_ids", product_ids)
        for product_id in product_ids:
            check_id("product_id", product_id)
        self.products_changed(product_ids)
        return await self.catalog.delete(list(product_ids))

    def products_changed(self, product_ids: Iterable[str]) -> None:
        """Products re-ingested or deleted: the next request reads them from the catalog again."""
        self._items.drop(product_ids)

    async def ready(self) -> bool:
        """Whether image queries can be served: Triton serves the model and the catalog answers.

        Redis is left out on purpose: without it Recommend still answers (visually, with `history`
        degraded), so a history outage must not take every gateway out of rotation. The state of all
        three dependencies is exported as recsys_dependency_up.
        """
        embedder_up, catalog_up, history_up = await asyncio.gather(
            self.embedder.ready(), self._answers(self._count_products), self._answers(self.history.ping))
        self._metrics.record_dependencies(embedder=embedder_up, catalog=catalog_up, history=history_up)
        return embedder_up and catalog_up

    async def _answers(self, check: Callable[[], Awaitable[object]]) -> bool:
        """Whether `check` finishes without a domain error; it is only called here, so that a readiness check
        cancelled before this runs leaves no coroutine unawaited."""
        try:
            await self._within("health check", self._settings.search_timeout_s, check())
        except RecsysError:
            return False
        return True

    async def _count_products(self) -> None:
        self._metrics.catalog_products.set(await self.catalog.count())
