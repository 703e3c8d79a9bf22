"""Properties of the history-aware re-ranker (pure functions, no servers)."""

import math
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import InvalidArgument
from gateway.experiments import Arm, Experiments
from ranker import (
    NO_RULES,
    NO_TASTE,
    Boost,
    Candidate,
    HistoryItem,
    Ranked,
    ReasonKind,
    RecencyDecay,
    Rules,
    RuleScore,
    Taste,
    Weights,
    diversify,
    rerank,
    taste_of,
)

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
    dismissed: float
    half_life_views: float
    history_temperature: float
    near_duplicate: float


def vectors(dim: int) -> st.SearchStrategy[np.ndarray]:
    """Small-integer vectors, zero vectors included (their cosine similarity is 0)."""
    return st.lists(st.integers(-3, 3), min_size=dim, max_size=dim).map(lambda v: np.array(v, np.float32))


def view_similarities(vector: np.ndarray, taste: Taste, history: list[HistoryItem]) -> tuple[float, ...]:
    """What the catalog gives the ranker: the cosine similarity to each of the taste's views."""
    by_id = {h.product_id: h.vector for h in history}
    return tuple(cosine(vector, by_id[view.product_id]) for view in taste.views)


@st.composite
def scenarios(draw: st.DrawFn, min_history: int = 0) -> Scenario:
    """Candidates with unique ids, a history of distinct products whose ids may overlap theirs, and the
    candidates' vectors; each candidate has its similarities to the views."""
    dim = draw(st.integers(1, 5))
    viewed = draw(st.lists(st.sampled_from(PRODUCT_IDS), unique=True, min_size=min_history, max_size=8))
    history = [HistoryItem(product_id, draw(st.sampled_from(CATEGORIES)), draw(vectors(dim)), draw(st.integers(0, 30)))
               for product_id in viewed]
    taste = taste_of(history)
    ids = draw(st.lists(st.sampled_from(PRODUCT_IDS), unique=True, max_size=10))
    vectors_by_id = {product_id: draw(vectors(dim)) for product_id in ids}
    candidates = [Candidate(product_id, draw(st.sampled_from(CATEGORIES)), draw(st.floats(-1, 1)),
                            view_similarities(vectors_by_id[product_id], taste, history), draw(st.floats(0, 1)),
                            draw(st.floats(-1, 1)), draw(st.floats(0, 1)))
                  for product_id in ids]
    return candidates, history, vectors_by_id


weights_strategy = st.builds(Weights, visual=st.floats(0, 2), history=st.floats(0, 2), category=st.floats(0, 2),
                             popularity=st.floats(0, 2), dismissed=st.floats(0, 2), half_life_views=st.floats(0.1, 20),
                             history_temperature=st.floats(0.01, 10), near_duplicate=st.floats(-1, 0.99),
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


def bag(product_id: str, visual_score: float = 0.5, to_views: tuple[float, ...] = ()) -> Candidate:
    return Candidate(product_id, "bags", visual_score, to_views)


def bag_view(product_id: str, vector: list[float], position: int = 0) -> HistoryItem:
    return HistoryItem(product_id, "bags", np.array(vector), position)


def no_dismissals(candidates: list[Candidate]) -> list[Candidate]:
    return [replace(c, popularity=0.0, dismissal_similarity=-1.0) for c in candidates]


@few_examples
@given(scenarios(), weights_strategy)
def test_empty_history_and_no_popularity_give_the_visual_order(scenario: Scenario, weights: Weights) -> None:
    candidates = [replace(c, view_similarities=()) for c in no_dismissals(scenario[0])]
    ranked = rerank(candidates, NO_TASTE, weights)
    assert ids_of(ranked) == visual_order(candidates)
    for r in ranked:
        assert (r.history_score, r.category_score) == (0.0, 0.0)
        assert r.score == weights.visual * r.visual_score


@few_examples
@given(scenarios(), weights_strategy)
def test_score_is_the_documented_weighted_sum(scenario: Scenario, weights: Weights) -> None:
    candidates, history, _ = scenario
    by_id = {c.product_id: c for c in candidates}
    taste = taste_of(history, weights.half_life_views)
    recency = [0.5 ** (view.position / weights.half_life_views) for view in taste.views]
    recency = [w / sum(recency) for w in recency]
    t = weights.history_temperature
    for r in rerank(candidates, taste, weights):
        c = by_id[r.product_id]
        if history:
            soft_max = 1 + t * math.log(sum(w * math.exp((s - 1) / t) for w, s in zip(recency, c.view_similarities)))
            expected_history = soft_max - c.neighbour_similarity
            expected_category = sum(w for w, view in zip(recency, taste.views) if view.category == c.category)
        else:
            expected_history = expected_category = 0.0
        expected_dismissal = max(0.0, (c.dismissal_similarity - weights.near_duplicate) / (1 - weights.near_duplicate))
        assert (r.visual_score, r.popularity_score) == (c.visual_score, c.popularity)
        assert r.history_score == pytest.approx(expected_history, abs=1e-9)
        assert r.category_score == pytest.approx(expected_category, abs=1e-9)
        assert r.dismissal_score == pytest.approx(expected_dismissal, abs=1e-9)
        assert r.score == pytest.approx(weights.visual * r.visual_score + weights.history * r.history_score
                                        + weights.category * r.category_score
                                        + weights.popularity * r.popularity_score
                                        - weights.dismissed * r.dismissal_score, abs=1e-9)


def test_popularity_lifts_a_product_shoppers_view_more_over_a_slightly_closer_one() -> None:
    closer, popular = bag("closer", 0.80, (0.5,)), replace(bag("popular", 0.75, (0.5,)), popularity=1.0)
    taste = taste_of([bag_view("seen", [0, 1])])
    assert ids_of(rerank([closer, popular], taste)) == ["popular", "closer"]
    assert ids_of(rerank([closer, popular], taste, Weights(popularity=0.0))) == ["closer", "popular"]


@few_examples
@given(scenarios(), weights_strategy)
def test_order_is_a_deterministic_total_order(scenario: Scenario, weights: Weights) -> None:
    candidates, history, _ = scenario
    taste = taste_of(history, weights.half_life_views)
    ranked = rerank(candidates, taste, weights)
    assert rerank(candidates, taste_of(history, weights.half_life_views), weights) == ranked
    assert rerank(candidates[::-1], taste, weights) == ranked
    keys = [(-r.score, -r.visual_score, r.product_id) for r in ranked]
    assert keys == sorted(keys)


@few_examples
@given(scenarios(), st.sampled_from(CATEGORIES), st.floats(0.01, 2), st.booleans())
def test_history_in_one_category_moves_that_category_up(scenario: Scenario, category: str,
                                                        category_weight: float, exclude_viewed: bool) -> None:
    candidates, history, _ = scenario
    history = [replace(h, category=category) for h in history]
    weights = Weights(history=0.0, category=category_weight, popularity=0.0, dismissed=0.0,
                      exclude_viewed=exclude_viewed)
    ranked = ids_of(rerank(candidates, taste_of(history), weights))
    before = visual_order([c for c in candidates if c.product_id in ranked])
    for c in candidates:
        if c.product_id in ranked and c.category == category:
            assert ranked.index(c.product_id) <= before.index(c.product_id)
        elif c.product_id in ranked:
            assert ranked.index(c.product_id) >= before.index(c.product_id)


def test_a_shopper_of_two_styles_gets_products_of_either_not_their_blend() -> None:
    """Views of two styles: a product of one style beats one that sits between them, which the mean direction
    of the views would prefer (a large temperature gives that mean)."""
    style_a, style_b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    history = [bag_view("a1", style_a.tolist(), 0), bag_view("b1", style_b.tolist(), 1),
               bag_view("a2", style_a.tolist(), 2), bag_view("b2", style_b.tolist(), 3)]
    taste = taste_of(history)
    blend = np.array([1.0, 1.0, 0.4])
    candidates = [Candidate(name, "bags", 0.5, view_similarities(vector, taste, history))
                  for name, vector in (("of-style-b", style_b + 0.1), ("blend", blend))]
    assert ids_of(rerank(candidates, taste)) == ["of-style-b", "blend"]
    assert ids_of(rerank(candidates, taste, Weights(history_temperature=100.0))) == ["blend", "of-style-b"]


def test_temperature_spans_maximum_to_recency_weighted_mean() -> None:
    taste = taste_of([bag_view("x", [1, 0], 0), bag_view("y", [0, 1], 5)])
    [cold] = rerank([bag("c", 0.5, (0.2, 0.9))], taste, Weights(history_temperature=1e-3))
    [hot] = rerank([bag("c", 0.5, (0.2, 0.9))], taste, Weights(history_temperature=1e3))
    assert cold.history_score == pytest.approx(0.9, abs=0.01)
    assert hot.history_score == pytest.approx((0.2 * 1 + 0.9 * 0.5) / 1.5, abs=1e-3)


def test_a_product_close_to_everything_gains_less_from_the_views() -> None:
    taste = taste_of([bag_view("seen", [1, 0])])
    hub = replace(bag("hub", 0.5, (0.9,)), neighbour_similarity=0.95)
    specific = replace(bag("specific", 0.5, (0.9,)), neighbour_similarity=0.7)
    [first, second] = rerank([hub, specific], taste)
    assert (first.product_id, second.product_id) == ("specific", "hub")
    assert first.history_score - second.history_score == pytest.approx(0.25)


def test_near_duplicates_of_a_dismissed_product_are_demoted() -> None:
    near = replace(bag("near-duplicate", 0.9), dismissal_similarity=0.97)
    far = replace(bag("other", 0.8), dismissal_similarity=0.6)
    ranked = rerank([near, far])
    assert ids_of(ranked) == ["other", "near-duplicate"]
    assert ranked[0].dismissal_score == 0.0 and ranked[1].dismissal_score == pytest.approx(0.7)
    assert ids_of(rerank([near, far], weights=Weights(dismissed=0.0))) == ["near-duplicate", "other"]


def test_reasons_name_the_closest_view_and_come_largest_first() -> None:
    taste = taste_of([bag_view("latest", [1, 0], 0), bag_view("older", [0, 1], 1)])
    candidate = replace(bag("c", 0.6, (0.2, 0.99)), neighbour_similarity=0.5, popularity=1.0)
    [ranked] = rerank([candidate], taste, Weights(popularity=0.2))
    assert [reason.kind for reason in ranked.reasons] == [
        ReasonKind.VISUALLY_SIMILAR, ReasonKind.SIMILAR_TO_VIEWED, ReasonKind.VIEWED_CATEGORY, ReasonKind.POPULAR]
    assert ranked.reasons[1].product_id == "older"
    contributions = [reason.contribution for reason in ranked.reasons]
    assert contributions == sorted(contributions, reverse=True)
    [anonymous] = rerank([bag("c", 0.3)])
    assert [reason.kind for reason in anonymous.reasons] == [ReasonKind.VISUALLY_SIMILAR]


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
    others = [h for h in others if h.product_id != "seen"]
    dim = others[0].vector.size if others else 3
    vector = np.arange(1, dim + 1, dtype=np.float32)

    def parts_with_view_at(view_position: int) -> tuple[float, float]:
        history = [*others, HistoryItem("seen", "hats", vector, view_position)]
        taste = taste_of(history)
        [r] = rerank([Candidate("new", "hats", 0.5, view_similarities(vector, taste, history))], taste)
        return r.history_score, r.category_score

    recent, older = parts_with_view_at(position), parts_with_view_at(position + shift)
    assert older[0] <= recent[0] + 1e-9
    if others:
        assert older[1] < recent[1]
    else:
        assert older == pytest.approx(recent) and recent == pytest.approx((1.0, 1.0))


@few_examples
@given(scenarios(), weights_strategy, st.integers(0, 12))
def test_limit_keeps_the_top_of_the_full_order(scenario: Scenario, weights: Weights, limit: int) -> None:
    candidates, history, _ = scenario
    taste = taste_of(history, weights.half_life_views)
    assert rerank(candidates, taste, weights, limit=limit) == rerank(candidates, taste, weights)[:limit]


@few_examples
@given(scenarios(min_history=1), weights_strategy)
def test_taste_vector_is_the_unit_recency_weighted_mean(scenario: Scenario, weights: Weights) -> None:
    _, history, _ = scenario
    mean = sum(0.5 ** (h.position / weights.half_life_views) * direction(h.vector) for h in history)
    vector = taste_of(history, weights.half_life_views).vector
    if vector is None:
        assert np.linalg.norm(mean) == pytest.approx(0.0, abs=1e-8)
    else:
        assert np.linalg.norm(vector) == pytest.approx(1.0)
        assert vector.tolist() == pytest.approx((mean / np.linalg.norm(mean)).tolist())


def test_a_product_viewed_twice_is_one_view_at_its_latest_position() -> None:
    taste = taste_of([bag_view("a", [1, 0], 3), bag_view("b", [0, 1], 1), bag_view("a", [1, 0], 0)])
    assert [(view.product_id, view.position) for view in taste.views] == [("a", 0), ("b", 1)]


def test_only_relative_positions_matter_however_old_the_history() -> None:
    candidates = [bag("a", 0.5, (0.9, 0.1)), bag("b", 0.5, (0.2, 0.6))]
    recent = [bag_view("x", [1, 0], 0), bag_view("y", [0, 1], 3)]
    old = [replace(view, position=view.position + 5000) for view in recent]
    assert taste_of(old, 1.0).vector == pytest.approx(taste_of(recent, 1.0).vector)
    weights = Weights(half_life_views=1.0)
    assert rerank(candidates, taste_of(old), weights) == rerank(candidates, taste_of(recent), weights)


def test_taste_vector_of_one_view_is_its_direction_and_none_when_empty() -> None:
    assert taste_of([]) == NO_TASTE
    vector = taste_of([HistoryItem("a", "bags", np.array([3.0, 4.0], dtype=np.float32), 7)]).vector
    assert vector is not None and vector.tolist() == pytest.approx([0.6, 0.8])


def test_taste_vector_is_none_when_the_views_cancel_out() -> None:
    assert taste_of([bag_view("a", [1, 2], 4), bag_view("b", [-2, -4], 4)]).vector is None
    # Weights 2 ** -0.5, 2 ** -0.5 and 1 cancel only up to rounding: no direction is left either.
    views = [bag_view("x", [1, 0], 1), bag_view("y", [0, 1], 1), bag_view("z", [-1, -1], 0)]
    assert taste_of(views, 2.0).vector is None


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
    ({"dismissed": -1.0}, "weight dismissed must be a finite number >= 0"),
    ({"half_life_views": 0.0}, "half_life_views must be a finite number > 0"),
    ({"history_temperature": float("inf")}, "history_temperature must be a finite number > 0"),
    ({"near_duplicate": 1.0}, "near_duplicate must be in -1..1"),
])
def test_invalid_weights_are_rejected(fields: NumericWeights, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Weights(**fields)


ONE_VIEW = [bag_view("v", [1, 0])]


@pytest.mark.parametrize("candidates, history, limit, message", [
    ([bag("a")], [bag_view("v", [1, 0]), bag_view("w", [1, 0, 0])], None, "history item w: vector has 3 dimensions"),
    ([], [HistoryItem("v", "bags", np.ones((2, 2)), 0)], None, "vector must be 1-D and non-empty"),
    ([], [bag_view("v", [])], None, "vector must be 1-D and non-empty"),
    ([], [bag_view("v", [1, float("nan")])], None, "history item v: vector has non-finite values"),
    ([bag("a", float("nan"))], [], None, "candidate a: visual_score must be finite"),
    ([bag("a", 0.5, (float("inf"),))], ONE_VIEW, None, "candidate a: view similarities must be finite"),
    ([bag("a", 0.5, (0.1, 0.2))], ONE_VIEW, None, "candidate a: 2 view similarities for 1 views"),
    ([replace(bag("a"), neighbour_similarity=float("nan"))], [], None, "neighbour_similarity must be finite"),
    ([Candidate("a", "bags", 0.5, popularity=1.5)], [], None, "candidate a: popularity must be in 0..1"),
    ([Candidate("a", "bags", 0.5, popularity=float("nan"))], [], None, "candidate a: popularity must be in 0..1"),
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


def ranked_bags(scores: list[float]) -> list[Ranked]:
    return rerank([bag(f"b{i}", score) for i, score in enumerate(scores)])


def test_without_diversity_the_top_of_the_ranking_is_kept() -> None:
    ranked = ranked_bags([0.9, 0.8, 0.7, 0.6])
    assert diversify(ranked, 3) == ranked[:3]
    assert diversify(ranked, 3, np.eye(4), mmr_lambda=1.0) == ranked[:3]


def test_mmr_moves_up_a_product_unlike_those_above_it_and_says_so() -> None:
    ranked = ranked_bags([0.9, 0.89, 0.8])
    near_twins = np.array([[1.0, 0.0], [0.999, 0.045], [0.0, 1.0]])
    diverse = diversify(ranked, 3, near_twins, mmr_lambda=0.5)
    assert ids_of(diverse) == ["b0", "b2", "b1"]
    assert [ReasonKind.DIVERSITY in [r.kind for r in item.reasons] for item in diverse] == [False, True, False]
    assert ids_of(diversify(ranked, 3, near_twins, mmr_lambda=0.99)) == ["b0", "b1", "b2"]


@few_examples
@given(st.lists(st.floats(0, 1), max_size=12), st.lists(st.sampled_from("abc"), min_size=12, max_size=12),
       st.integers(1, 3), st.integers(0, 12))
def test_a_group_never_has_more_than_its_share(scores: list[float], groups: list[str], per_group: int,
                                               limit: int) -> None:
    ranked = ranked_bags(scores)
    group_of = dict(zip([r.product_id for r in ranked], groups[:len(ranked)], strict=True))
    diverse = diversify(ranked, limit, groups=[group_of[r.product_id] for r in ranked], max_per_group=per_group)
    counts = Counter(group_of[item.product_id] for item in diverse)
    assert max(counts.values(), default=0) <= per_group and len(diverse) <= limit
    kept = [r for r in ranked if r.product_id in {item.product_id for item in diverse}]
    assert ids_of(diverse) == ids_of(kept), "grouping alone keeps the ranking order"
    capped = {group for group, count in counts.items() if count == per_group}
    assert len(diverse) == limit or all(group_of[r.product_id] in capped for r in ranked if r not in kept)


@pytest.mark.parametrize("arguments, message", [
    ({"mmr_lambda": 0.0}, "mmr_lambda must be in 0..1"),
    ({"mmr_lambda": float("nan")}, "mmr_lambda must be in 0..1"),
    ({"max_per_group": 0}, "max_per_group must be >= 1"),
    ({"groups": ["a"]}, "1 groups for 2 items"),
    ({"vectors": np.eye(3), "mmr_lambda": 0.5}, "3 vectors for 2 items"),
])
def test_invalid_diversity_is_rejected(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        diversify(ranked_bags([0.5, 0.4]), 2, **arguments)


NOW_S = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def test_a_boost_matches_by_category_or_attribute_and_a_decay_halves_with_each_half_life():
    rules = Rules((Boost("shoes", "category", frozenset({"shoes"}), 0.3),
                   Boost("no-red", "colour", frozenset({"red"}), -0.5)),
                  RecencyDecay("new-in", "released", 10.0, 0.4))
    def added(category: str, attributes: dict[str, str]) -> dict[str, float]:
        return {score.rule: score.contribution for score in rules.scores(category, attributes, NOW_S)}

    assert added("shoes", {"colour": "red", "released": "2026-11-21"}) == pytest.approx(
        {"shoes": 0.3, "no-red": -0.5, "new-in": 0.2})
    assert added("bags", {"colour": "blue", "released": "2026-12-24T10:00:00+02:00"}) == {"new-in": 0.4}, \
        "a date in the future counts as now"
    assert added("bags", {"released": "2026-11-11T00:00:00"}) == pytest.approx({"new-in": 0.1}), \
        "a date without an offset is UTC"
    assert added("bags", {"released": "last week"}) == {}
    assert added("bags", {"category": "shoes"}) == {}, "the category key is the category itself"
    assert not NO_RULES and NO_RULES.scores("shoes", {"released": "2026-11-21"}, NOW_S) == ()


def test_rule_scores_add_to_the_score_and_lifting_rules_are_reasons():
    candidates = [Candidate("plain", "bags", 0.9),
                  Candidate("boosted", "bags", 0.7, rule_scores=(RuleScore("promo", 0.3), RuleScore("tiny", 0.01))),
                  Candidate("buried", "bags", 0.95, rule_scores=(RuleScore("bury", -0.5),))]
    ranked = rerank(candidates)
    assert [r.product_id for r in ranked] == ["boosted", "plain", "buried"]
    by_id = {r.product_id: r for r in ranked}
    assert by_id["boosted"].rules_score == pytest.approx(0.31) and by_id["boosted"].score == pytest.approx(1.01)
    assert [(reason.kind, reason.rule) for reason in by_id["boosted"].reasons] == [
        (ReasonKind.VISUALLY_SIMILAR, ""), (ReasonKind.BOOSTED, "promo")], "below 0.05 a rule is no reason"
    assert by_id["buried"].score == pytest.approx(0.45)
    assert [reason.kind for reason in by_id["buried"].reasons] == [ReasonKind.VISUALLY_SIMILAR]
    with pytest.raises(ValueError, match="rule scores must be finite"):
        rerank([Candidate("p", "bags", 0.5, rule_scores=(RuleScore("r", math.inf),))])


def test_experiment_arms_take_their_share_of_users_and_keep_each_user():
    arms = Experiments([Arm("a", 20, Weights()), Arm("b", 80, Weights(history=2.0))], salt="s")
    users = [f"user-{number}" for number in range(5000)]
    assigned = [arms.assigned(user) for user in users]
    share_a = sum(arm is not None and arm.name == "a" for arm in assigned) / len(users)
    assert 0.17 < share_a < 0.23
    assert [arms.assigned(user) for user in users[:50]] == assigned[:50], "deterministic"
    reshuffled = Experiments(arms.arms, salt="another")
    assert [reshuffled.assigned(user) for user in users[:50]] != assigned[:50], "the salt reshuffles"
    assert arms.assigned("") == arms.arms[0] == arms.arm("user-1", "a")
    with pytest.raises(InvalidArgument, match="'c' is not configured; the arms are 'a', 'b'"):
        arms.arm("user-1", "c")
    assert Experiments().assigned("user-1") is None
    with pytest.raises(ValueError, match="add up to 90"):
        Experiments([Arm("a", 90, Weights())])
