"""History-aware re-ranking of visually similar candidates: a pure, deterministic function.

Each candidate gets five score parts:

- ``visual_score``: its cosine similarity to the query, as given by the caller (the vector search);
- ``history_score``: how much closer it is to the shopper's recent views than to its own catalog neighbours.
  With ``s_j`` its cosine similarity to view ``j`` and ``w_j`` the view's recency weight, the affinity is the
  recency-weighted soft maximum ``1 + t * log(sum_j w_j * exp((s_j - 1) / t))`` with temperature ``t``
  (``history_temperature``): near ``max_j s_j`` for a small ``t``, the recency-weighted mean of the ``s_j`` for
  a large one. A shopper of several styles keeps them apart instead of being averaged into one direction. The
  history score is that affinity minus the candidate's ``neighbour_similarity`` (the mean cosine similarity to
  its nearest catalog neighbours; local scaling, as CSLS does), so that a product close to everything (a hub)
  gains nothing for being close to the views too. 0 without views;
- ``category_score``: the recency-weighted share of recent views in its category (0..1);
- ``popularity_score``: how much all shoppers viewed it, as given by the caller (0..1);
- ``dismissal_score``: how near a duplicate of a product the shopper dismissed it is: 0 below the cosine
  similarity ``near_duplicate``, rising linearly to 1 at similarity 1;

and ``score = visual * visual_score + history * history_score + category * category_score
+ popularity * popularity_score - dismissed * dismissal_score + rules_score`` with the weights of :class:`Weights`,
``rules_score`` being the sum of what the request's business rules add to the candidate (:mod:`ranker.rules`).
The view at position ``p`` (0 = most recent) has the recency weight ``0.5 ** (p / half_life_views)``; the weights
of a history are normalised to sum 1. With an empty history the history and category parts are 0; with popularity 0
as well the order is the visual order. Each ranked product carries its :class:`Reason` codes.
"""

import enum
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ranker.rules import RuleScore

# Below this length the recency-weighted mean of unit vectors is rounding noise: the views cancel out.
_MIN_MEAN_LENGTH = 1e-9
# A weighted score part counts as a reason for an item from this contribution to its score.
REASON_MIN_CONTRIBUTION = 0.05


@dataclass(frozen=True)
class Candidate:
    """A product to rank.

    Attributes:
        visual_score: cosine similarity to the query.
        view_similarities: cosine similarity to each view of :attr:`Taste.views`, in that order (empty without).
        neighbour_similarity: mean cosine similarity to its nearest catalog neighbours (0 when unknown).
        dismissal_similarity: highest cosine similarity to a product the shopper dismissed (-1 without).
        popularity: how much all shoppers viewed it (0..1).
        rule_scores: what each business rule of the request adds to its score.
    """

    product_id: str
    category: str
    visual_score: float
    view_similarities: Sequence[float] = ()
    neighbour_similarity: float = 0.0
    dismissal_similarity: float = -1.0
    popularity: float = 0.0
    rule_scores: Sequence[RuleScore] = ()


@dataclass(frozen=True)
class HistoryItem:
    """A product the shopper viewed; ``position`` 0 is the most recent view, 1 the one before, and so on."""

    product_id: str
    category: str
    vector: np.ndarray
    position: int


@dataclass(frozen=True)
class View:
    """A recent view as ranking uses it: the product, its category and its position (0 = most recent)."""

    product_id: str
    category: str
    position: int


@dataclass(frozen=True)
class Weights:
    """How much each score part counts, how fast the influence of a view fades, and how views combine.

    Attributes:
        visual: weight of the similarity to the query (default 1.0). The photo the shopper asked about is
            the main signal; the other weights are relative to this one.
        history: weight of the history score (default 1.0, what the evaluation's validation shoppers chose for model
            version 1; version 2 chose 2, docs/model-and-quality.md). A product 0.1 closer to the views than to its
            own neighbours moves up as much as a 0.1 higher visual similarity.
        category: weight of the share of recent views in the candidate's category (default 0.25). A
            history all in one category adds at most 0.25.
        popularity: weight of the product's popularity among all shoppers (default 0.2): the most viewed
            product gains as much as a 0.2 higher visual similarity.
        dismissed: weight of the dismissal score (default 1.0): an exact duplicate of a dismissed product loses
            as much as a visual similarity of 1.
        half_life_views: number of views after which a view counts half as much (default 5.0).
        history_temperature: temperature of the soft maximum over the views (default 0.2, chosen on the validation
            shoppers for both model versions): views whose similarities differ by much more than it count as the
            best one alone.
        near_duplicate: cosine similarity from which a product counts as a near duplicate of a dismissed one
            (default 0.9, about the 90th percentile of nearest-neighbour similarity in the demo catalog).
        exclude_viewed: leave out candidates the shopper has already viewed (default True).
    """

    visual: float = 1.0
    history: float = 1.0
    category: float = 0.25
    popularity: float = 0.2
    dismissed: float = 1.0
    half_life_views: float = 5.0
    history_temperature: float = 0.2
    near_duplicate: float = 0.9
    exclude_viewed: bool = True

    def __post_init__(self) -> None:
        for name in ("visual", "history", "category", "popularity", "dismissed"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"weight {name} must be a finite number >= 0, got {value!r}")
        for name in ("half_life_views", "history_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not -1.0 <= self.near_duplicate < 1.0:
            raise ValueError(f"near_duplicate must be in -1..1 (1 excluded), got {self.near_duplicate!r}")


@dataclass(frozen=True)
class Taste:
    """A shopper's recent views as ranking uses them, from :func:`taste_of`.

    Attributes:
        vector: the recency-weighted mean of the unit view vectors, L2-normalised; None without views or when they
            cancel out. It is the query of history-only recommendations.
        views: the distinct recent views, most recent first; candidates give their similarity to each.
        viewed: the viewed products' ids.
    """

    vector: np.ndarray | None
    views: tuple[View, ...]
    viewed: frozenset[str]


NO_TASTE = Taste(None, (), frozenset())


class ReasonKind(enum.Enum):
    """Why a product is in the list."""

    VISUALLY_SIMILAR = "visually_similar"
    SIMILAR_TO_VIEWED = "similar_to_viewed"
    VIEWED_CATEGORY = "viewed_category"
    POPULAR = "popular"
    DIVERSITY = "diversity"
    BOOSTED = "boosted"


@dataclass(frozen=True)
class Reason:
    """One reason, with its weighted contribution to the score; ``product_id`` is the viewed product behind a
    SIMILAR_TO_VIEWED reason, ``rule`` the business rule behind a BOOSTED one (each empty otherwise)."""

    kind: ReasonKind
    contribution: float
    product_id: str = ""
    rule: str = ""


@dataclass(frozen=True)
class Ranked:
    """A ranked product with its total score, the parts it is made of (before weighting; ``rules_score``: what the
    business rules add) and its reasons, the largest contribution first."""

    product_id: str
    category: str
    score: float
    visual_score: float
    history_score: float
    category_score: float
    popularity_score: float
    dismissal_score: float
    rules_score: float
    reasons: tuple[Reason, ...]


def rerank(candidates: Sequence[Candidate], taste: Taste = NO_TASTE, weights: Weights = Weights(),
           limit: int | None = None) -> list[Ranked]:
    """Candidates ordered by score desc, then visual score desc, then product id asc; at most ``limit``.

    Raises ValueError for a negative limit, duplicate candidate ids, non-finite similarities, view similarities
    that do not match ``taste.views``, or a popularity outside 0..1.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    _validate(candidates, len(taste.views))
    kept = [c for c in candidates if c.product_id not in taste.viewed] if weights.exclude_viewed else list(candidates)
    recency = _recency_weights([view.position for view in taste.views], weights.half_life_views)
    shares: dict[str, float] = {}
    for view, weight in zip(taste.views, recency, strict=True):
        shares[view.category] = shares.get(view.category, 0.0) + float(weight)
    history_scores, closest_views = _history_scores(kept, recency, weights.history_temperature)
    parts = [(c.visual_score, history_score, shares.get(c.category, 0.0), c.popularity,
              _dismissal_score(c.dismissal_similarity, weights.near_duplicate),
              sum(rule.contribution for rule in c.rule_scores))
             for c, history_score in zip(kept, history_scores, strict=True)]
    scores = [weights.visual * visual + weights.history * history + weights.category * category
              + weights.popularity * popularity - weights.dismissed * dismissal + rules
              for visual, history, category, popularity, dismissal, rules in parts]
    order = sorted(range(len(kept)), key=lambda i: (-scores[i], -kept[i].visual_score, kept[i].product_id))
    ranked = []
    for i in order[:limit]:  # only the returned candidates become Ranked: most of a pool is cut
        visual, history, category, popularity, dismissal, rules = parts[i]
        closest = taste.views[closest_views[i]].product_id if taste.views else ""
        reasons = _reasons(weights, visual, history, category, popularity, closest, kept[i].rule_scores)
        ranked.append(Ranked(kept[i].product_id, kept[i].category, scores[i], visual, history, category, popularity,
                             dismissal, rules, reasons))
    return ranked


def diversify(ranked: Sequence[Ranked], limit: int, vectors: np.ndarray | None = None, mmr_lambda: float = 1.0,
              groups: Sequence[str] | None = None, max_per_group: int = 1) -> list[Ranked]:
    """At most ``limit`` of ``ranked`` (best first), diversified.

    With ``vectors`` (the unit vectors of ``ranked``, row by row) and ``mmr_lambda`` < 1, maximal marginal
    relevance: each next item is the one with the largest ``mmr_lambda * score - (1 - mmr_lambda) * s``, ``s``
    its highest cosine similarity to the items already chosen (ties: the earlier in ``ranked``). With ``groups``
    (each item's group), at most ``max_per_group`` items of a group. An item listed while a better-scored one is not
    above it gets a DIVERSITY reason (contribution 0). Raises ValueError for lambda outside 0..1 (0 excluded), a group
    count below 1, or vectors or groups that do not match ``ranked``.
    """
    if not (math.isfinite(mmr_lambda) and 0.0 < mmr_lambda <= 1.0):
        raise ValueError(f"mmr_lambda must be in 0..1 (0 excluded), got {mmr_lambda!r}")
    if max_per_group < 1:
        raise ValueError(f"max_per_group must be >= 1, got {max_per_group}")
    if groups is not None and len(groups) != len(ranked):
        raise ValueError(f"{len(groups)} groups for {len(ranked)} items")
    similarities = None
    if vectors is not None and mmr_lambda < 1.0:
        if len(vectors) != len(ranked):
            raise ValueError(f"{len(vectors)} vectors for {len(ranked)} items")
        unit = np.asarray(vectors, dtype=np.float64)
        similarities = unit @ unit.T
    closest = np.full(len(ranked), -np.inf)  # each item's highest similarity to the chosen ones
    per_group: Counter[str] = Counter()
    chosen: list[int] = []
    remaining = list(range(len(ranked)))
    while remaining and len(chosen) < limit:
        open_items = [i for i in remaining if groups is None or per_group[groups[i]] < max_per_group]
        if not open_items:
            break
        if similarities is None or not chosen:
            best = open_items[0]
        else:
            best = max(open_items, key=lambda i: (mmr_lambda * ranked[i].score - (1 - mmr_lambda) * closest[i], -i))
        chosen.append(best)
        remaining.remove(best)
        if groups is not None:
            per_group[groups[best]] += 1
        if similarities is not None:
            closest = np.maximum(closest, similarities[best])
    result, passed_over = [], set(range(len(ranked)))
    for i in chosen:  # an item with a better-scored one not above it was chosen for diversity
        result.append(ranked[i] if i == min(passed_over) else _inserted(ranked[i]))
        passed_over.remove(i)
    return result


def _inserted(ranked: Ranked) -> Ranked:
    """The item with a DIVERSITY reason added (last): it was chosen ahead of a better-scored item."""
    return replace(ranked, reasons=(*ranked.reasons, Reason(ReasonKind.DIVERSITY, 0.0)))


def taste_of(history: Sequence[HistoryItem], half_life_views: float = Weights.half_life_views) -> Taste:
    """The history's :class:`Taste`: its distinct views (the most recent position of each) and their
    recency-weighted mean direction.

    Raises ValueError for a negative history position, or history vectors that are not 1-D, finite and all of
    the same length.
    """
    for item in history:
        if item.position < 0:
            raise ValueError(f"history item {item.product_id}: position must be >= 0, got {item.position}")
    history_matrix = _history_matrix(history)
    if not history:
        return NO_TASTE
    mean = _mean_direction(history_matrix, _recency_weights([item.position for item in history], half_life_views))
    strength = float(np.linalg.norm(mean))
    latest: dict[str, HistoryItem] = {}
    for item in sorted(history, key=lambda item: item.position):
        latest.setdefault(item.product_id, item)
    views = tuple(View(item.product_id, item.category, item.position) for item in latest.values())
    return Taste(mean / strength if strength > _MIN_MEAN_LENGTH else None, views, frozenset(latest))


def _history_scores(candidates: Sequence[Candidate], recency: np.ndarray, temperature: float
                    ) -> tuple[list[float], list[int]]:
    """Per candidate its history score and the index of the view that contributes most to it (0 without views)."""
    if not len(recency) or not candidates:
        return [0.0] * len(candidates), [0] * len(candidates)
    similarities = np.array([c.view_similarities for c in candidates], dtype=np.float64)  # [candidates, views]
    terms = np.log(recency)[np.newaxis, :] + (similarities - 1.0) / temperature
    top = terms.max(axis=1)
    affinity = 1.0 + temperature * (top + np.log(np.exp(terms - top[:, np.newaxis]).sum(axis=1)))
    neighbours = np.array([c.neighbour_similarity for c in candidates], dtype=np.float64)
    return (affinity - neighbours).tolist(), terms.argmax(axis=1).tolist()


def _dismissal_score(similarity: float, near_duplicate: float) -> float:
    """0 below ``near_duplicate``, rising linearly to 1 at similarity 1."""
    return max(0.0, (similarity - near_duplicate) / (1.0 - near_duplicate))


def _reasons(weights: Weights, visual: float, history: float, category: float, popularity: float,
             closest_view: str, rule_scores: Sequence[RuleScore]) -> tuple[Reason, ...]:
    """The weighted parts and rules of at least REASON_MIN_CONTRIBUTION, largest first; the visual similarity
    always."""
    reasons = [Reason(ReasonKind.VISUALLY_SIMILAR, weights.visual * visual)]
    for reason in (Reason(ReasonKind.SIMILAR_TO_VIEWED, weights.history * history, closest_view),
                   Reason(ReasonKind.VIEWED_CATEGORY, weights.category * category),
                   Reason(ReasonKind.POPULAR, weights.popularity * popularity),
                   *(Reason(ReasonKind.BOOSTED, rule.contribution, rule=rule.rule) for rule in rule_scores)):
        if reason.contribution >= REASON_MIN_CONTRIBUTION:
            reasons.append(reason)
    return tuple(sorted(reasons, key=lambda reason: -reason.contribution))


def _mean_direction(history_matrix: np.ndarray, recency: np.ndarray) -> np.ndarray:
    """Recency-weighted mean of the history vectors (rows) scaled to unit length (not normalised); each row's
    weight is divided by its length rather than the rows scaled, which would copy the matrix."""
    lengths = np.sqrt(np.einsum("ij,ij->i", history_matrix, history_matrix))
    return np.divide(recency, lengths, out=np.zeros_like(recency), where=lengths > 0) @ history_matrix


def _recency_weights(positions: Sequence[int], half_life_views: float) -> np.ndarray:
    """``0.5 ** (position / half_life_views)`` per view, normalised to sum 1.

    Positions are counted from the most recent view given, which leaves the normalised weights unchanged
    and keeps the largest weight at 1 however old the history is.
    """
    if not positions:
        return np.empty(0)
    offsets = np.array(positions, dtype=np.float64)
    recency = np.exp2(-(offsets - offsets.min()) / half_life_views)
    return recency / recency.sum()


def _validate(candidates: Sequence[Candidate], views: int) -> None:
    """Unique candidate ids, finite similarities, one similarity per view, popularity in 0..1."""
    repeated = sorted(product_id for product_id, count in Counter(c.product_id for c in candidates).items()
                      if count > 1)
    if repeated:
        raise ValueError(f"candidate product ids must be unique, repeated: {', '.join(repeated)}")
    for c in candidates:
        for name in ("visual_score", "neighbour_similarity", "dismissal_similarity"):
            if not math.isfinite(getattr(c, name)):
                raise ValueError(f"candidate {c.product_id}: {name} must be finite, got {getattr(c, name)!r}")
        if not all(math.isfinite(rule.contribution) for rule in c.rule_scores):
            raise ValueError(f"candidate {c.product_id}: rule scores must be finite")
        if len(c.view_similarities) != views:
            raise ValueError(f"candidate {c.product_id}: {len(c.view_similarities)} view similarities for "
                             f"{views} views")
        if not all(math.isfinite(similarity) for similarity in c.view_similarities):
            raise ValueError(f"candidate {c.product_id}: view similarities must be finite")
        if not 0.0 <= c.popularity <= 1.0:
            raise ValueError(f"candidate {c.product_id}: popularity must be in 0..1, got {c.popularity!r}")


def _history_matrix(history: Sequence[HistoryItem]) -> np.ndarray:
    """The history vectors as float64 rows, checked in one pass; only a bad history is checked item by item,
    to name the culprit."""
    try:
        matrix = np.array([item.vector for item in history], dtype=np.float64)
    except (TypeError, ValueError):  # vectors of different shapes, or not numbers
        matrix = np.empty((len(history), 0))
    if history and (matrix.ndim != 2 or not matrix.shape[1] or not np.isfinite(matrix).all()):
        _check_vectors([(f"history item {item.product_id}", item.vector) for item in history])
        raise ValueError("history vectors must be numbers")
    return matrix


def _check_vectors(named_vectors: Sequence[tuple[str, np.ndarray]]) -> None:
    """All vectors 1-D, non-empty, of the length of the first one, and finite."""
    dim = np.size(named_vectors[0][1])
    for name, vector in named_vectors:
        shape = np.shape(vector)
        if len(shape) != 1 or shape[0] == 0:
            raise ValueError(f"{name}: vector must be 1-D and non-empty, got shape {shape}")
        if shape[0] != dim:
            raise ValueError(f"{name}: vector has {shape[0]} dimensions, expected {dim}")
    finite = np.isfinite(np.array([vector for _, vector in named_vectors])).all(axis=1)
    if not finite.all():
        raise ValueError(f"{named_vectors[int(np.argmin(finite))][0]}: vector has non-finite values")
