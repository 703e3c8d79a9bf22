"""The evaluation's metrics and shopper simulator: pure functions, checked on small worked examples."""

import numpy as np
import pytest

from evaluation.metrics import (
    confusion,
    histogram_quantile,
    metrics_at,
    most_confused,
    next_item_metrics,
    per_category,
    relevance,
    retrieval_metrics,
)
from evaluation.personalisation import Popularity, Step, steps_of
from evaluation.shoppers import Catalog, Shopper, ShopperConfig, simulate


def test_retrieval_metrics_on_a_worked_example() -> None:
    # query 0 (label 0): results relevant, not, relevant; query 1 (label 1): not, not, relevant
    relevant = relevance(np.array([0, 1]), np.array([[0, 1, 0], [0, 2, 1]]))
    in_catalog = np.array([2, 4])
    at_3 = retrieval_metrics(relevant, in_catalog, 3)
    assert at_3["precision"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert at_3["recall"] == pytest.approx((2 / 2 + 1 / 4) / 2)
    # AP@3: query 0 (1/1 + 2/3) / min(3, 2); query 1 (1/3) / min(3, 4)
    assert at_3["map"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 3) / 3) / 2)
    assert at_3["hit"] == 1.0
    assert metrics_at(relevant, in_catalog, (1,))[1] == {"precision": 0.5, "recall": 0.25, "map": 0.5, "hit": 0.5}
    with pytest.raises(ValueError, match="at least 4"):
        retrieval_metrics(relevant, in_catalog, 4)


def test_per_category_and_confusion() -> None:
    query_labels = np.array([0, 0, 1])
    results = np.array([[0, 1], [0, 0], [0, 0]])
    relevant = relevance(query_labels, results)
    by_category = per_category(query_labels, relevant, np.array([5, 5, 5]), 2, ["a", "b", "c"])
    assert by_category["a"]["precision"] == 0.75 and by_category["b"]["precision"] == 0.0
    assert "c" not in by_category
    matrix = confusion(query_labels, results, 2, 3)
    np.testing.assert_allclose(matrix, [[0.75, 0.25, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert most_confused(matrix, ["a", "b", "c"], 2) == [("b", "a", 1.0), ("a", "b", 0.25)]


def test_next_item_metrics_reward_the_target_by_rank() -> None:
    scores = next_item_metrics([["x", "t"], ["t"], ["x", "y"]], ["t", "t", "t"], 2)
    assert scores["hit"] == pytest.approx(2 / 3)
    assert scores["ndcg"] == pytest.approx((1 / np.log2(3) + 1) / 3)


def test_histogram_quantile_interpolates_within_buckets_like_promql() -> None:
    buckets = {0.1: 10.0, 0.2: 30.0, 0.5: 40.0, float("inf"): 40.0}
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)
    assert histogram_quantile(1.0, buckets) == pytest.approx(0.5)
    assert np.isnan(histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """A synthetic catalog: 3 categories of 60 noisy variants of a few base images each."""
    rng = np.random.default_rng(7)
    bases = rng.integers(0, 256, size=(6, 28, 28))
    pixels = np.clip(bases[np.arange(180) % 6] + rng.normal(0, 20, size=(180, 28, 28)), 0, 255).astype(np.uint8)
    return Catalog(pixels, np.arange(180) % 3, ShopperConfig(style_size=10, look_alikes=5), seed=0)


def test_simulated_shoppers_are_reproducible_and_browse_as_specified(catalog: Catalog) -> None:
    shoppers = simulate(catalog, 40, seed=1)
    again = simulate(catalog, 40, seed=1)
    assert [s.views for s in shoppers] == [s.views for s in again]
    assert [s.views for s in shoppers] != [s.views for s in simulate(catalog, 40, seed=2)]
    config = catalog.config
    for shopper in shoppers:
        assert config.min_views <= len(shopper.views) <= config.max_views
        assert len(set(shopper.views)) == len(shopper.views), "never the same product twice"
        assert 1 <= len(shopper.styles) <= config.max_styles
        assert shopper.weights.sum() == pytest.approx(1.0)
        for style in shopper.styles:
            assert len(style) == config.style_size
            assert len(set(catalog.labels[style])) == 1, "a style lies within one category"
    in_a_style = np.mean([view in np.concatenate(s.styles) for s in shoppers for view in s.views])
    assert in_a_style > 0.5, "views concentrate on the hidden styles"


def test_held_out_steps_and_popularity_baselines() -> None:
    shopper = Shopper(styles=(), weights=np.ones(1), views=(0, 1, 2, 3))
    steps = steps_of([shopper], ["a", "b", "c", "d"], "u", last=2)
    assert steps == [Step("u-0", ("a", "b"), "c"), Step("u-0", ("a", "b", "c"), "d")]
    assert steps[0].query == "b"
    others = [Shopper((), np.ones(1), (3, 3, 2)), Shopper((), np.ones(1), (4,))]
    popularity = Popularity(others, ["a", "b", "c", "d", "e"], ["x", "x", "y", "y", "x"])
    step = Step("u", ("a", "b"), "c")
    assert popularity.most_viewed(step)[:3] == ["d", "c", "e"]
    assert popularity.category_popularity(step)[:3] == ["e", "d", "c"], "the history's category first"
