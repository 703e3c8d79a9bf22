"""History-aware re-ranking of visually similar candidates: a pure, deterministic function.

Each candidate gets four score parts:

- ``visual_score``: its similarity to the query, as given by the caller (the vector search);
- ``history_score``: the recency-weighted mean cosine similarity between its vector and the vectors of
  the shopper's recent views (-1..1). That mean is ``|m| * cos(candidate, m)`` for the recency-weighted
  mean ``m`` of the unit view vectors, so the caller gives each candidate's cosine similarity to
  ``m``'s direction, :attr:`Taste.vector` (``taste_similarity``; a vector search scores it) and candidate
  vectors are never needed;
- ``category_score``: the recency-weighted share of recent views in its category (0..1);
- ``popularity_score``: how much all shoppers viewed it, as given by the caller (0..1);

and ``score = visual * visual_score + history * history_score + category * category_score
+ popularity * popularity_score`` with the weights of :class:`Weights`. The view at position ``p``
(0 = most recent) has the recency weight ``0.5 ** (p / half_life_views)``; the weights of a history are
normalised to sum 1. With an empty history both history parts are 0; with popularity 0 as well the order
is the visual order. :func:`taste_of` summarises a history once; :func:`rerank` ranks with that summary.
"""

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Below this length the recency-weighted mean of unit vectors is rounding noise: the views cancel out.
_MIN_MEAN_LENGTH = 1e-9


@dataclass(frozen=True)
class Candidate:
    """A product to rank: its id, category, cosine similarity to the query, cosine similarity to the
    shopper's taste vector (:attr:`Taste.vector`; 0 without one), and popularity (0..1)."""

    product_id: str
    category: str
    visual_score: float
    taste_similarity: float = 0.0
    popularity: float = 0.0


@dataclass(frozen=True)
class HistoryItem:
    """A product the shopper viewed; ``position`` 0 is the most recent view, 1 the one before, and so on."""

    product_id: str
    category: str
    vector: np.ndarray
    position: int


@dataclass(frozen=True)
class Weights:
    """How much each score part counts, and how fast the influence of a view fades.

    Attributes:
        visual: weight of the similarity to the query (default 1.0). The photo the shopper asked about is
            the main signal; the other weights are relative to this one.
        history: weight of the similarity to recent views (default 0.5). Half the visual weight lets a
            coherent history reorder candidates of similar visual score without burying a clearly better
            visual match.
        category: weight of the share of recent views in the candidate's category (default 0.25). A
            history all in one category adds at most 0.25: enough to lift that category over slightly
            closer matches from elsewhere, not enough to hide a strong match in another category.
        popularity: weight of the product's popularity among all shoppers (default 0.2). A crowd signal
            that breaks near-ties among similar candidates in favour of what shoppers look at more; at
            0.2 the most viewed product gains as much as a 0.2 higher visual similarity.
        half_life_views: number of views after which a view counts half as much (default 5.0). The view
            5 back weighs 1/2 of the latest one and the view 20 back 1/16, so the last few views of a
            session dominate while an older interest still shows.
        exclude_viewed: leave out candidates the shopper has already viewed (default True): showing the
            product just seen wastes a slot.
    """

    visual: float = 1.0
    history: float = 0.5
    category: float = 0.25
    popularity: float = 0.2
    half_life_views: float = 5.0
    exclude_viewed: bool = True

    def __post_init__(self) -> None:
        for name in ("visual", "history", "category", "popularity"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"weight {name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.half_life_views) and self.half_life_views > 0):
            raise ValueError(f"half_life_views must be a finite number > 0, got {self.half_life_views!r}")


@dataclass(frozen=True)
class Taste:
    """A shopper's recent views as ranking uses them, from :func:`taste_of`.

    Attributes:
        vector: the recency-weighted mean ``m`` of the unit view vectors, L2-normalised; None without views or
            when they cancel out. It is the query of the taste search and of history-only recommendations.
        strength: ``|m|`` (0..1): a candidate's mean cosine similarity to the views is
            ``strength * cos(candidate, vector)``.
        category_shares: the recency-weighted share of the views in each category viewed.
        viewed: the viewed products' ids.
    """

    vector: np.ndarray | None
    strength: float
    category_shares: Mapping[str, float]
    viewed: frozenset[str]


NO_TASTE = Taste(None, 0.0, {}, frozenset())


@dataclass(frozen=True)
class Ranked:
    """A ranked product with its total score and the parts it is made of (before weighting)."""

    product_id: str
    category: str
    score: float
    visual_score: float
    history_score: float
    category_score: float
    popularity_score: float


def rerank(candidates: Sequence[Candidate], taste: Taste = NO_TASTE, weights: Weights = Weights(),
           limit: int | None = None) -> list[Ranked]:
    """Candidates ordered by score desc, then visual score desc, then product id asc; at most ``limit``.

    ``taste`` is :func:`taste_of` the shopper's history under the same weights. Raises ValueError for a negative
    limit, duplicate candidate ids, a non-finite visual score or taste similarity, or a popularity outside 0..1.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    _validate(candidates)
    kept = [c for c in candidates if c.product_id not in taste.viewed] if weights.exclude_viewed else candidates
    history_scores = [taste.strength * float(c.taste_similarity) for c in kept]
    category_scores = [taste.category_shares.get(c.category, 0.0) for c in kept]
    scores = [float(weights.visual * c.visual_score + weights.history * history_score
                    + weights.category * category_score + weights.popularity * c.popularity)
              for c, history_score, category_score in zip(kept, history_scores, category_scores, strict=True)]
    order = sorted(range(len(kept)), key=lambda i: (-scores[i], -kept[i].visual_score, kept[i].product_id))
    return [Ranked(product_id=kept[i].product_id, category=kept[i].category, score=scores[i],
                   visual_score=float(kept[i].visual_score), history_score=history_scores[i],
                   category_score=category_scores[i], popularity_score=float(kept[i].popularity))
            for i in order[:limit]]  # only the returned candidates become Ranked: most of a pool is cut


def taste_of(history: Sequence[HistoryItem], weights: Weights = Weights()) -> Taste:
    """The history's :class:`Taste`: checked and converted once, for the taste search and the re-rank.

    Raises ValueError for a negative history position, or history vectors that are not 1-D, finite and all of
    the same length.
    """
    for item in history:
        if item.position < 0:
            raise ValueError(f"history item {item.product_id}: position must be >= 0, got {item.position}")
    history_matrix = _history_matrix(history)
    if not history:
        return NO_TASTE
    recency = _recency_weights(history, weights)
    mean = _mean_direction(history_matrix, recency)
    strength = float(np.linalg.norm(mean))
    category_shares: dict[str, float] = {}
    for item, weight in zip(history, recency, strict=True):
        category_shares[item.category] = category_shares.get(item.category, 0.0) + float(weight)
    vector = mean / strength if strength > _MIN_MEAN_LENGTH else None
    return Taste(vector, strength, category_shares, frozenset(item.product_id for item in history))


def _mean_direction(history_matrix: np.ndarray, recency: np.ndarray) -> np.ndarray:
    """Recency-weighted mean of the history vectors (rows) scaled to unit length (not normalised); each row's
    weight is divided by its length rather than the rows scaled, which would copy the matrix."""
    lengths = np.sqrt(np.einsum("ij,ij->i", history_matrix, history_matrix))
    return _divide_by_length(recency, lengths) @ history_matrix


def _recency_weights(history: Sequence[HistoryItem], weights: Weights) -> np.ndarray:
    """``0.5 ** (position / half_life_views)`` per view, normalised to sum 1.

    Positions are counted from the most recent view given, which leaves the normalised weights unchanged
    and keeps the largest weight at 1 however old the history is.
    """
    positions = np.array([item.position for item in history], dtype=np.float64)
    recency = np.exp2(-(positions - positions.min()) / weights.half_life_views)
    return recency / recency.sum()


def _divide_by_length(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``values / lengths``, and 0 where a length is 0: a zero vector has no direction."""
    return np.divide(values, lengths, out=np.zeros_like(values), where=lengths > 0)


def _validate(candidates: Sequence[Candidate]) -> None:
    """Unique candidate ids, finite similarities, popularity in 0..1."""
    repeated = sorted(product_id for product_id, count in Counter(c.product_id for c in candidates).items()
                      if count > 1)
    if repeated:
        raise ValueError(f"candidate product ids must be unique, repeated: {', '.join(repeated)}")
    for c in candidates:
        for name in ("visual_score", "taste_similarity"):
            if not math.isfinite(getattr(c, name)):
                raise ValueError(f"candidate {c.product_id}: {name} must be finite, got {getattr(c, name)!r}")
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
