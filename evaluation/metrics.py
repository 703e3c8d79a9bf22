"""Retrieval and ranking metrics, pure functions over category labels and ranked ids.

For a query of category c with the categories of its ranked results r_1..r_K and N_c catalog products
of category c (rel_i = 1 when r_i = c):

- precision@K = sum(rel_1..rel_K) / K
- recall@K = sum(rel_1..rel_K) / N_c (of all catalog products of the query's category, the share found)
- AP@K = sum over i <= K of precision@i * rel_i, divided by min(K, N_c); mAP@K is its mean over queries
- hit@K = 1 if any of rel_1..rel_K is 1 (what metric-learning papers call Recall@K)

For recommendations with one held-out next item: hit@K = 1 if the item is among the first K, and
NDCG@K = 1 / log2(rank + 1) for the item at 1-based rank <= K, else 0 (the ideal DCG is 1).
"""

from collections.abc import Mapping, Sequence

import numpy as np

RETRIEVAL_METRICS = ("precision", "recall", "map", "hit")


def relevance(query_labels: np.ndarray, result_labels: np.ndarray) -> np.ndarray:
    """[Q, K] booleans: whether each ranked result has the query's label."""
    return np.asarray(result_labels) == np.asarray(query_labels)[:, None]


def retrieval_metrics(relevant: np.ndarray, relevant_in_catalog: np.ndarray, k: int) -> dict[str, float]:
    """Mean precision@k, recall@k, mAP@k and hit@k over queries.

    ``relevant``: [Q, >=k] relevance of each query's ranked results; ``relevant_in_catalog``: [Q], N_c per query.
    """
    top = np.asarray(relevant, dtype=np.float64)[:, :k]
    if top.shape[1] < k:
        raise ValueError(f"need at least {k} ranked results per query, got {top.shape[1]}")
    in_catalog = np.asarray(relevant_in_catalog, dtype=np.float64)
    precision_at_i = np.cumsum(top, axis=1) / np.arange(1, k + 1)
    average_precision = (precision_at_i * top).sum(axis=1) / np.maximum(np.minimum(k, in_catalog), 1)
    return {"precision": float(top.mean(axis=1).mean()),
            "recall": float((top.sum(axis=1) / np.maximum(in_catalog, 1)).mean()),
            "map": float(average_precision.mean()),
            "hit": float(top.any(axis=1).mean())}


def metrics_at(relevant: np.ndarray, relevant_in_catalog: np.ndarray, ks: Sequence[int]
               ) -> dict[int, dict[str, float]]:
    """``retrieval_metrics`` for each k in ``ks``."""
    return {k: retrieval_metrics(relevant, relevant_in_catalog, k) for k in ks}


def per_category(query_labels: np.ndarray, relevant: np.ndarray, relevant_in_catalog: np.ndarray, k: int,
                 names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``retrieval_metrics`` at k over the queries of each category (categories without queries left out)."""
    labels = np.asarray(query_labels)
    return {names[label]: retrieval_metrics(relevant[labels == label], relevant_in_catalog[labels == label], k)
            for label in range(len(names)) if (labels == label).any()}


def confusion(query_labels: np.ndarray, result_labels: np.ndarray, k: int, categories: int) -> np.ndarray:
    """[C, C]: row c is the share of each category among the top-k results of the queries of category c."""
    counts = np.zeros((categories, categories))
    for label, results in zip(np.asarray(query_labels), np.asarray(result_labels)[:, :k]):
        np.add.at(counts[label], results, 1)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def most_confused(matrix: np.ndarray, names: Sequence[str], count: int = 5) -> list[tuple[str, str, float]]:
    """The ``count`` largest off-diagonal shares: (query category, result category, share), largest first."""
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(-off_diagonal, axis=None)[:count]
    return [(names[row], names[column], float(off_diagonal[row, column]))
            for row, column in zip(*np.unravel_index(order, matrix.shape))]


def next_item_metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> dict[str, float]:
    """Mean hit@k and NDCG@k of ranked lists against one held-out target each."""
    hits, gains = [], []
    for items, target in zip(ranked, targets, strict=True):
        top = list(items)[:k]
        rank = top.index(target) + 1 if target in top else 0
        hits.append(rank > 0)
        gains.append(1 / np.log2(rank + 1) if rank else 0.0)
    return {"hit": float(np.mean(hits)), "ndcg": float(np.mean(gains))}


def histogram_quantile(quantile: float, buckets: Mapping[float, float]) -> float:
    """The quantile of a Prometheus histogram from its cumulative bucket counts (upper bound -> count).

    Interpolates linearly inside the bucket, as PromQL's histogram_quantile does; NaN without samples.
    The +Inf bucket answers with the highest finite bound.
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return float("nan")
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if np.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound
