"""Properties of the history-aware re-ranker (pure functions, no servers)."""

import math
from dataclasses import replace
from typing import TypedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker import NO_TASTE, Candidate, HistoryItem, Ranked, Weights, rerank, taste_of

CATEGORIES = ("bags", "dresses", "shoes")
PRODUCT_IDS = tuple(f"p{index:02d}" for index in range(16))
Scenario = tuple[list[Candidate], list[HistoryItem], dict[str, np.ndarray]]
# Half the default number of examples keeps the module fast on a busy 2-core machine; no deadline, as
# timings there vary.
few_examples = settings(max_examples=50, deadline=None)
DEFAULT_WEIGHTS = Weights()


class NumericWeights(TypedDict, total=False):
    """Keyword arguments of Weights that take numbers."""

    visual: float
    history: float
    category: float
    popularity: float
    half_life_views: float


def vectors(dim: int) -> st.SearchStrategy[np.ndarray]:
    """Small-integer vectors, zero vectors included (their cosine similarity is 0)."""
    return st.lists(st.integers(-3, 3), min_size=dim, max_size=dim).map(lambda v: np.array(v, np.float32))


def taste_similarity(vector: np.ndarray, history: list[HistoryItem], weights: Weights = DEFAULT_WEIGHTS) -> float:
    """What a vector search gives the ranker: the cosine similarity to the history vector, 0 without one."""
    taste = taste_of(history, weights).vector
    return 0.0 if taste is None else cosine(vector, taste)


@st.composite
def scenarios(draw: st.DrawFn, min_history: int = 0) -> Scenario:
    """Candidates with unique ids, a history whose ids may overlap theirs, and the candidates' vectors.

    Each candidate's taste similarity is computed from its vector with the default weights; tests that
    rank with other weights recompute it.
    """
    dim = draw(st.integers(1, 5))
    history = draw(st.lists(st.builds(HistoryItem, st.sampled_from(PRODUCT_IDS), st.sampled_from(CATEGORIES),
                                      vectors(dim), st.integers(0, 30)), min_size=min_history, max_size=8))
    ids = draw(st.lists(st.sampled_from(PRODUCT_IDS), unique=True, max_size=10))
    vectors_by_id = {product_id: draw(vectors(dim)) for product_id in ids}
    candidates = [Candidate(product_id, draw(st.sampled_from(CATEGORIES)), draw(st.floats(-1, 1)),
                            taste_similarity(vectors_by_id[product_id], history), draw(st.floats(0, 1)))
                  for product_id in ids]
    return candidates, history, vectors_by_id


def with_weights(scenario: Scenario, weights: Weights) -> list[Candidate]:
    """The scenario's candidates with taste similarities to the history vector under `weights`."""
    candidates, history, vectors_by_id = scenario
    return [replace(c, taste_similarity=taste_similarity(vectors_by_id[c.product_id], history, weights))
            for c in candidates]


weights_strategy = st.builds(Weights, visual=st.floats(0, 2), history=st.floats(0, 2), category=st.floats(0, 2),
                             popularity=st.floats(0, 2), half_life_views=st.floats(0.1, 20),
                             exclude_viewed=st.booleans())


def visual_order(candidates: list[Candidate]) -> list[str]:
    return [c.product_id for c in sorted(candidates, key=lambda c: (-c.visual_score, c.product_id))]


def ids_of(ranked: list[Ranked]) -> list[str]:
    return [r.product_id for r in ranked]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = math.hypot(*map(float, a)) * math.hypot(*map(float, b))
    return sum(float(x) * float(y) for x, y in zip(a, b)) / norms if norms else 0.0


def direction(vector: np.ndarray) -> np.ndarray:
    vector = vector.astype(np.float64)
    norm = np.linalg.norm(vector)
    return vector / norm if norm else np.zeros(vector.shape)


def bag(product_id: str, visual_score: float = 0.5, taste: float = 0.0) -> Candidate:
    return Candidate(product_id, "bags", visual_score, taste)


def bag_view(product_id: str, vector: list[float], position: int = 0) -> HistoryItem:
    return HistoryItem(product_id, "bags", np.array(vector), position)


@few_examples
@given(scenarios(), weights_strategy)
def test_empty_history_and_no_popularity_give_the_visual_order(scenario: Scenario, weights: Weights) -> None:
    candidates = [replace(candidate, popularity=0.0) for candidate in scenario[0]]
    ranked = rerank(candidates, NO_TASTE, weights)
    assert ids_of(ranked) == visual_order(candidates)
    for r in ranked:
        assert (r.history_score, r.category_score) == (0.0, 0.0)
        assert r.score == weights.visual * r.visual_score


@few_examples
@given(scenarios(), weights_strategy)
def test_score_is_the_documented_weighted_sum(scenario: Scenario, weights: Weights) -> None:
    _, history, vectors_by_id = scenario
    candidates = with_weights(scenario, weights)
    by_id = {c.product_id: c for c in candidates}
    recency = [0.5 ** (h.position / weights.half_life_views) for h in history]
    for r in rerank(candidates, taste_of(history, weights), weights):
        candidate = by_id[r.product_id]
        if history:
            vector = vectors_by_id[r.product_id]
            expected_history = sum(w * cosine(vector, h.vector) for w, h in zip(recency, history))
            expected_history /= sum(recency)
            expected_category = sum(w for w, h in zip(recency, history) if h.category == candidate.category)
            expected_category /= sum(recency)
        else:
            expected_history = expected_category = 0.0
        assert (r.visual_score, r.popularity_score) == (candidate.visual_score, candidate.popularity)
        assert r.history_score == pytest.approx(expected_history, abs=1e-9)
        assert r.category_score == pytest.approx(expected_category, abs=1e-9)
        assert r.score == pytest.approx(weights.visual * r.visual_score + weights.history * r.history_score
                                        + weights.category * r.category_score
                                        + weights.popularity * r.popularity_score, abs=1e-12)


def test_popularity_lifts_a_product_shoppers_view_more_over_a_slightly_closer_one() -> None:
    closer, popular = bag("closer", visual_score=0.80), replace(bag("popular", 0.75), popularity=1.0)
    history = [bag_view("seen", [0, 1])]
    assert ids_of(rerank([closer, popular], taste_of(history))) == ["popular", "closer"]
    assert ids_of(rerank([closer, popular], taste_of(history), Weights(popularity=0.0))) == ["closer", "popular"]


@few_examples
@given(scenarios(), weights_strategy)
def test_order_is_a_deterministic_total_order(scenario: Scenario, weights: Weights) -> None:
    candidates, history, _ = scenario
    taste = taste_of(history, weights)
    ranked = rerank(candidates, taste, weights)
    assert rerank(candidates, taste_of(history, weights), weights) == ranked
    assert rerank(candidates[::-1], taste, weights) == ranked
    keys = [(-r.score, -r.visual_score, r.product_id) for r in ranked]
    assert keys == sorted(keys)


@few_examples
@given(scenarios(), st.sampled_from(CATEGORIES), st.floats(0.01, 2), st.booleans())
def test_history_in_one_category_moves_that_category_up(scenario: Scenario, category: str,
                                                        category_weight: float, exclude_viewed: bool) -> None:
    candidates, history, _ = scenario
    history = [replace(h, category=category) for h in history]
    weights = Weights(history=0.0, category=category_weight, popularity=0.0, exclude_viewed=exclude_viewed)
    ranked = ids_of(rerank(candidates, taste_of(history, weights), weights))
    before = visual_order([c for c in candidates if c.product_id in ranked])
    for c in candidates:
        if c.product_id in ranked and c.category == category:
            assert ranked.index(c.product_id) <= before.index(c.product_id)
        elif c.product_id in ranked:
            assert ranked.index(c.product_id) >= before.index(c.product_id)


def test_history_in_one_category_lifts_it_with_default_weights() -> None:
    shoe, bag = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    history = [HistoryItem(f"shoe-viewed-{p}", "shoes", shoe + 0.1 * bag, p) for p in range(3)]
    candidates = [Candidate("bag-1", "bags", 0.80), Candidate("bag-2", "bags", 0.79),
                  Candidate("shoe-1", "shoes", 0.75)]
    assert ids_of(rerank(candidates)) == ["bag-1", "bag-2", "shoe-1"]
    tastes = {"bags": taste_similarity(bag, history), "shoes": taste_similarity(shoe, history)}
    candidates = [replace(c, taste_similarity=tastes[c.category]) for c in candidates]
    assert ids_of(rerank(candidates, taste_of(history))) == ["shoe-1", "bag-1", "bag-2"]


@few_examples
@given(scenarios(min_history=1))
def test_viewed_items_are_excluded_unless_asked_otherwise(scenario: Scenario) -> None:
    candidates, history, _ = scenario
    viewed = {h.product_id for h in history}
    taste = taste_of(history)
    assert taste.viewed == viewed
    assert ids_of(rerank(candidates, taste)) == [
        r.product_id for r in rerank(candidates, taste, Weights(exclude_viewed=False)) if r.product_id not in viewed]
    assert sorted(ids_of(rerank(candidates, taste, Weights(exclude_viewed=False)))) == sorted(
        c.product_id for c in candidates)


@few_examples
@given(scenarios(), st.integers(0, 5), st.integers(1, 20))
def test_an_older_view_has_less_influence(scenario: Scenario, position: int, shift: int) -> None:
    _, others, _ = scenario
    dim = others[0].vector.size if others else 3
    vector = np.arange(1, dim + 1, dtype=np.float32)

    def parts_with_view_at(view_position: int) -> tuple[float, float]:
        history = [*others, HistoryItem("seen", "hats", vector, view_position)]
        [r] = rerank([Candidate("new", "hats", 0.5, taste_similarity(vector, history))], taste_of(history))
        return r.history_score, r.category_score

    recent, older = parts_with_view_at(position), parts_with_view_at(position + shift)
    assert older[0] <= recent[0] + 1e-12
    if others:
        assert older[1] < recent[1]
    else:
        assert older == pytest.approx(recent) and recent == pytest.approx((1.0, 1.0))


@few_examples
@given(scenarios(), weights_strategy, st.integers(0, 12))
def test_limit_keeps_the_top_of_the_full_order(scenario: Scenario, weights: Weights, limit: int) -> None:
    candidates, history, _ = scenario
    taste = taste_of(history, weights)
    assert rerank(candidates, taste, weights, limit=limit) == rerank(candidates, taste, weights)[:limit]


@few_examples
@given(scenarios(min_history=1), weights_strategy)
def test_taste_vector_is_the_unit_recency_weighted_mean(scenario: Scenario, weights: Weights) -> None:
    _, history, _ = scenario
    mean = sum(0.5 ** (h.position / weights.half_life_views) * direction(h.vector) for h in history)
    vector = taste_of(history, weights).vector
    if vector is None:
        assert np.linalg.norm(mean) == pytest.approx(0.0, abs=1e-8)
    else:
        assert np.linalg.norm(vector) == pytest.approx(1.0)
        assert vector.tolist() == pytest.approx((mean / np.linalg.norm(mean)).tolist())


def test_only_relative_positions_matter_however_old_the_history() -> None:
    candidates = [bag("a", taste=0.9), bag("b", taste=0.2)]
    recent = [bag_view("x", [1, 0], 0), bag_view("y", [0, 1], 3)]
    old = [replace(view, position=view.position + 5000) for view in recent]
    weights = Weights(half_life_views=1.0)
    assert taste_of(old, weights).vector == pytest.approx(taste_of(recent, weights).vector)
    assert rerank(candidates, taste_of(old, weights), weights) == rerank(candidates, taste_of(recent, weights), weights)


def test_taste_vector_of_one_view_is_its_direction_and_none_when_empty() -> None:
    assert taste_of([]) == NO_TASTE
    vector = taste_of([HistoryItem("a", "bags", np.array([3.0, 4.0], dtype=np.float32), 7)]).vector
    assert vector is not None and vector.tolist() == pytest.approx([0.6, 0.8])


def test_taste_vector_is_none_when_the_views_cancel_out() -> None:
    assert taste_of([bag_view("a", [1, 2], 4), bag_view("b", [-2, -4], 4)]).vector is None
    # Weights 2 ** -0.5, 2 ** -0.5 and 1 cancel only up to rounding: no direction is left either.
    views = [bag_view("x", [1, 0], 1), bag_view("y", [0, 1], 1), bag_view("z", [-1, -1], 0)]
    assert taste_of(views, Weights(half_life_views=2.0)).vector is None


def test_taste_vector_leans_to_recent_views() -> None:
    x, y = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    vector = taste_of([HistoryItem("a", "bags", x, 0), HistoryItem("b", "bags", y, 5)]).vector
    expected = np.array([1.0, 0.5]) / math.hypot(1.0, 0.5)
    assert vector is not None and vector.tolist() == pytest.approx(expected.tolist())


@pytest.mark.parametrize("fields, message", [
    ({"visual": -0.1}, "weight visual must be a finite number >= 0"),
    ({"history": float("nan")}, "weight history must be a finite number >= 0"),
    ({"category": float("inf")}, "weight category must be a finite number >= 0"),
    ({"popularity": -1.0}, "weight popularity must be a finite number >= 0"),
    ({"half_life_views": 0.0}, "half_life_views must be a finite number > 0"),
])
def test_invalid_weights_are_rejected(fields: NumericWeights, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Weights(**fields)


@pytest.mark.parametrize("candidates, history, limit, message", [
    ([bag("a")], [bag_view("v", [1, 0]), bag_view("w", [1, 0, 0])], None, "history item w: vector has 3 dimensions"),
    ([], [HistoryItem("v", "bags", np.ones((2, 2)), 0)], None, "vector must be 1-D and non-empty"),
    ([], [bag_view("v", [])], None, "vector must be 1-D and non-empty"),
    ([], [bag_view("v", [1, float("nan")])], None, "history item v: vector has non-finite values"),
    ([bag("a", float("nan"))], [], None, "candidate a: visual_score must be finite"),
    ([bag("a", taste=float("inf"))], [], None, "candidate a: taste_similarity must be finite"),
    ([Candidate("a", "bags", 0.5, 0.0, 1.5)], [], None, "candidate a: popularity must be in 0..1"),
    ([Candidate("a", "bags", 0.5, 0.0, float("nan"))], [], None, "candidate a: popularity must be in 0..1"),
    ([bag("a"), bag("a", 0.4)], [], None, "unique, repeated: a"),
    ([bag("a")], [bag_view("v", [1, 0], -1)], None, "history item v: position must be >= 0"),
    ([bag("a")], [], -1, "limit must be >= 0"),
])
def test_invalid_inputs_are_rejected(candidates: list[Candidate], history: list[HistoryItem],
                                     limit: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rerank(candidates, taste_of(history), limit=limit)


def test_taste_of_validates_its_input() -> None:
    with pytest.raises(ValueError, match="history item b: vector has 1 dimensions, expected 2"):
        taste_of([bag_view("a", [1, 0]), bag_view("b", [1])])
