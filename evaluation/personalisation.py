"""Personalisation: which list best predicts a simulated shopper's next view.

Each evaluated step holds out one view: the shopper has viewed ``history`` (oldest first), is looking
at ``query`` (the last of them), and views ``target`` next. Methods, each a top-10 list:

- ``visual``: Recommend(product_id=query), no user: neighbours of the product being looked at.
- ``history_aware``: Recommend(product_id=query, user_id), with the history recorded through RecordView.
- ``own_views_only``: the same with the popularity weight at 0: what the shopper's own views add.

The two are the arms of one experiment (:data:`ARMS`) of the gateway, asked for by name at every step; the report
also splits the test shoppers between the arms as the gateway assigns live traffic (by a hash of the user id),
each arm scored on its own shoppers (:func:`arm_scores`).
- ``history_only``: Recommend(user_id), no query.
- ``most_viewed``: the products other shoppers viewed most (non-visual).
- ``category_popularity``: the most viewed products of the categories in the shopper's history, those
  with the larger share of the history first (non-visual).

Redis holds the views of the shoppers behind the non-visual baselines before anything is measured, so the
ranker's popularity counts start from the same crowd; the views recorded during the evaluation add to them.
The ranker's weights are chosen on validation shoppers in two stages: the shopper's own signals (history,
temperature, category, half-life) with popularity at 0, then the popularity weight on top of the best of those.
The in-process pipeline over the same Triton, Qdrant and Redis gives each validation step's candidates once
(`Pipeline.ranking_inputs`), and every setting ranks them with the served ranker. The test shoppers, simulated
with another seed, are served by gateways with the chosen weights; at each test step the in-process pipeline's
candidates are ranked again offline, to check that they give the served own-views list and to compare ways of
using the views (:data:`APPROACHES`).
"""

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from evaluation.metrics import next_item_metrics
from evaluation.shoppers import Shopper
from gateway.experiments import Experiments
from gateway.pipeline import Pipeline, RankingInputs, RecommendQuery
from gateway.ports import HistoryStore
from ranker import ReasonKind, Weights, rerank
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc

K = 10
# The experiment arms of the served lists, as methods; each serves half of the shoppers.
ARMS = ("history_aware", "own_views_only")
METHODS = ("visual", "history_aware", "own_views_only", "history_only", "most_viewed", "category_popularity")
HISTORY_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
TEMPERATURE_GRID = (0.02, 0.05, 0.1, 0.2)
CATEGORY_GRID = (0.0, 0.25, 0.5)
HALF_LIFE_GRID = (2.0, 5.0, 10.0)
POPULARITY_GRID = (0.1, 0.2, 0.4, 0.8)
CROWD_CONCURRENCY = 32
# Ways of using the own views compared on the test steps, each a change to the chosen own-views weights or to the
# candidates: a temperature of 10 makes the history score the recency-weighted mean similarity to the views (what
# one mean direction gives), 0.005 the similarity to the closest view.
APPROACHES = ("soft maximum, local scaling (served)", "closest view", "mean of the views", "without local scaling",
              "query search only")


@dataclass(frozen=True)
class Step:
    """One held-out next view of a shopper."""

    user: str
    history: tuple[str, ...]
    target: str

    @property
    def query(self) -> str:
        return self.history[-1]


def one_user_per_step(steps: Sequence[Step]) -> list[Step]:
    """The steps, each under a user of its own, so that each history is recorded once and ranked as it is."""
    return [replace(step, user=f"{step.user}-{number}") for number, step in enumerate(steps)]


def steps_of(shoppers: Sequence[Shopper], product_ids: Sequence[str], prefix: str, last: int) -> list[Step]:
    """The last ``last`` views of each shopper, each held out in turn after the views before it."""
    steps: list[Step] = []
    for number, shopper in enumerate(shoppers):
        views = [product_ids[view] for view in shopper.views]
        steps.extend(Step(f"{prefix}-{number}", tuple(views[:position]), views[position])
                     for position in range(len(views) - last, len(views)))
    return steps


class Popularity:
    """View counts of products over a population of shoppers, and the two non-visual baselines."""

    def __init__(self, shoppers: Iterable[Shopper], product_ids: Sequence[str], categories: Sequence[str]) -> None:
        counts = Counter(product_ids[view] for shopper in shoppers for view in shopper.views)
        self._category = dict(zip(product_ids, categories, strict=True))
        order = sorted(product_ids, key=lambda product_id: (-counts[product_id], product_id))
        self._ranked = order
        self._ranked_by_category: dict[str, list[str]] = {}
        for product_id in order:
            self._ranked_by_category.setdefault(self._category[product_id], []).append(product_id)

    def most_viewed(self, step: Step) -> list[str]:
        seen = set(step.history)
        return list(itertools.islice((p for p in self._ranked if p not in seen), K))

    def category_popularity(self, step: Step) -> list[str]:
        seen = set(step.history)
        shares = Counter(self._category[product_id] for product_id in step.history)
        ordered = [p for category, _ in sorted(shares.items(), key=lambda item: (-item[1], item[0]))
                   for p in self._ranked_by_category[category]]
        return list(itertools.islice((p for p in [*ordered, *self._ranked] if p not in seen), K))


async def record_history(record: Callable[[str, str], Awaitable[object]], steps: Sequence[Step]) -> None:
    """Records the views before each user's first step, in order (later steps add their own)."""
    first: dict[str, Step] = {}
    for step in steps:
        first.setdefault(step.user, step)
    for step in first.values():
        for product_id in step.history:
            await record(step.user, product_id)


async def record_crowd(history: HistoryStore, shoppers: Sequence[Shopper], product_ids: Sequence[str]) -> None:
    """Records every view of ``shoppers`` (users ``crowd-<n>``), several shoppers at a time, each in order."""
    semaphore = asyncio.Semaphore(CROWD_CONCURRENCY)

    async def record(number: int, shopper: Shopper) -> None:
        async with semaphore:
            for view in shopper.views:
                await history.record(f"crowd-{number}", product_ids[view], 0)

    await asyncio.gather(*(record(number, shopper) for number, shopper in enumerate(shoppers)))


def weight_grid(base: Weights) -> list[Weights]:
    """The first tuning stage: visual fixed at 1, popularity at 0, the own-view weights, temperature and
    half-life varied."""
    return [replace(base, visual=1.0, history=history, history_temperature=temperature, category=category,
                    popularity=0.0, half_life_views=half_life)
            for history, temperature, category, half_life in itertools.product(
                HISTORY_GRID, TEMPERATURE_GRID, CATEGORY_GRID, HALF_LIFE_GRID)]


def best_of(scores: Sequence[tuple[Weights, dict[str, float]]]) -> Weights:
    """The weights with the best hit@10, then NDCG@10."""
    return max(scores, key=lambda entry: (entry[1]["hit"], entry[1]["ndcg"]))[0]


@dataclass(frozen=True)
class Tuning:
    """The chosen weights, the best with popularity at 0, and every setting tried with its scores."""

    weights: Weights
    own_views_weights: Weights
    scores: list[tuple[Weights, dict[str, float]]]


def ranked_ids(inputs: RankingInputs, weights: Weights) -> list[str]:
    """The top-10 product ids the served ranker gives for these inputs under ``weights``."""
    return [ranked.product_id for ranked in rerank(inputs.candidates, inputs.taste, weights, K)]


async def ranking_inputs(pipeline: Pipeline, step: Step) -> RankingInputs:
    """What the pipeline ranks for a step's history-aware list."""
    return await pipeline.ranking_inputs(RecommendQuery(user_id=step.user, product_id=step.query, limit=K))


async def tune_weights(pipeline: Pipeline, defaults: Weights, steps: Sequence[Step], concurrency: int = 8
                       ) -> Tuning:
    """Weights chosen on ``steps`` (one step per user) in two stages: :func:`weight_grid`, then
    POPULARITY_GRID on top of its best; the best of all settings by hit@10 (then NDCG@10).

    The pipeline (whose popularity weight must not be 0, so that it reads popularity) gives each step's candidates
    once; each setting ranks them as the served ranker does.
    """
    if len({step.user for step in steps}) != len(steps):
        raise ValueError("tuning evaluates one step per user, with the history recorded once")
    await record_history(pipeline.record_feedback, steps)
    semaphore = asyncio.Semaphore(concurrency)

    async def inputs_of(step: Step) -> RankingInputs:
        async with semaphore:
            return await ranking_inputs(pipeline, step)

    inputs = await asyncio.gather(*(inputs_of(step) for step in steps))
    targets = [step.target for step in steps]

    def score(weights: Weights) -> tuple[Weights, dict[str, float]]:
        return weights, next_item_metrics([ranked_ids(each, weights) for each in inputs], targets, K)

    scores = [score(weights) for weights in weight_grid(defaults)]
    own_views = best_of(scores)
    scores += [score(replace(own_views, popularity=popularity)) for popularity in POPULARITY_GRID]
    return Tuning(best_of(scores), own_views, scores)


def reason_shares(inputs: Sequence[RankingInputs], weights: Weights) -> dict[str, float]:
    """Per reason kind, the share of the top-10 items under ``weights`` that give it."""
    items = [ranked for each in inputs for ranked in rerank(each.candidates, each.taste, weights, K)]
    counts = Counter(reason.kind.value for ranked in items for reason in ranked.reasons)
    return {kind.value: counts[kind.value] / max(len(items), 1) for kind in ReasonKind}


def approach_lists(inputs: Sequence[RankingInputs], query_only: Sequence[RankingInputs], weights: Weights
                   ) -> dict[str, list[list[str]]]:
    """Each of APPROACHES' top-10 lists for the test steps, from the in-process candidates (``query_only``: those of
    a pipeline that searches around the query alone)."""
    unscaled = [replace(each, candidates=[replace(c, neighbour_similarity=0.0) for c in each.candidates])
                for each in inputs]
    variants = (
        (inputs, weights),
        (inputs, replace(weights, history_temperature=0.005)),
        (inputs, replace(weights, history_temperature=10.0)),
        (unscaled, weights),
        (query_only, weights),
    )
    return {approach: [ranked_ids(each, variant_weights) for each in variant_inputs]
            for approach, (variant_inputs, variant_weights) in zip(APPROACHES, variants, strict=True)}


@dataclass
class ServedLists:
    """Every method's top-10 list per test step, and the in-process ranking inputs of each step's history-aware
    list (from the pipeline, and from a copy that searches around the query alone)."""

    lists: dict[str, list[list[str]]]
    inputs: list[RankingInputs]
    query_only_inputs: list[RankingInputs]


async def served_lists(stub: pb_grpc.RecommenderStub, pipeline: Pipeline, steps: Sequence[Step],
                       popularity: Popularity, timeout_s: float = 10.0) -> ServedLists:
    """Every method's top-10 list for each step; histories are recorded through ``stub`` as they grow.

    ``stub`` is a gateway running the experiment :data:`ARMS` (the chosen weights, and those without popularity);
    ``pipeline`` (over the same backends) gives the in-process ranking inputs at each step.
    """
    lists: dict[str, list[list[str]]] = {method: [] for method in METHODS}
    inputs: list[RankingInputs] = []
    query_only_inputs: list[RankingInputs] = []
    query_only = pipeline.searching_around_the_query_only()

    async def recommend(product_id: str | None = None, user_id: str | None = None, experiment: str = ARMS[0]
                        ) -> list[str]:
        request = pb.RecommendRequest(limit=K, product_id=product_id, user_id=user_id,  # None leaves a field unset
                                      experiment=experiment)
        response = await stub.Recommend(request, timeout=timeout_s)
        return [item.product_id for item in response.items]

    async def record(user: str, product_id: str) -> None:
        await stub.RecordView(pb.RecordViewRequest(user_id=user, product_id=product_id), timeout=timeout_s)

    for user in {step.user for step in steps}:
        await stub.ForgetUser(pb.ForgetUserRequest(user_id=user), timeout=timeout_s)
    await record_history(record, steps)
    for step in steps:
        lists["visual"].append(await recommend(product_id=step.query))
        for arm in ARMS:
            lists[arm].append(await recommend(product_id=step.query, user_id=step.user, experiment=arm))
        lists["history_only"].append(await recommend(user_id=step.user))
        lists["most_viewed"].append(popularity.most_viewed(step))
        lists["category_popularity"].append(popularity.category_popularity(step))
        inputs.append(await ranking_inputs(pipeline, step))
        query_only_inputs.append(await ranking_inputs(query_only, step))
        await record(step.user, step.target)
    return ServedLists(lists, inputs, query_only_inputs)


def scores_of(lists: dict[str, list[list[str]]], steps: Sequence[Step]) -> dict[str, dict[str, float]]:
    """hit@10 and NDCG@10 of each method."""
    targets = [step.target for step in steps]
    return {method: next_item_metrics(ranked, targets, K) for method, ranked in lists.items()}


def arm_scores(lists: dict[str, list[list[str]]], steps: Sequence[Step], experiments: Experiments
               ) -> dict[str, dict[str, float]]:
    """Each arm's shoppers, predictions, hit@10 and NDCG@10 over the steps of the shoppers the gateway assigns it (by
    the hash of their user id), its own list at each of them: the comparison live traffic gives."""
    scores = {}
    for arm in experiments.arms:
        mine = [i for i, step in enumerate(steps) if experiments.assigned(step.user) == arm]
        measured = next_item_metrics([lists[arm.name][i] for i in mine], [steps[i].target for i in mine], K)
        scores[arm.name] = {"shoppers": len({steps[i].user for i in mine}), "predictions": len(mine), **measured}
    return scores
