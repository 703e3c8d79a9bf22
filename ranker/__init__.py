"""History-aware re-ranking: numbers in, ordered products with their score parts and reasons out (numpy only)."""

from ranker.ranking import (
    NO_TASTE,
    Candidate,
    HistoryItem,
    Ranked,
    Reason,
    ReasonKind,
    Taste,
    View,
    Weights,
    diversify,
    rerank,
    taste_of,
)

__all__ = ["NO_TASTE", "Candidate", "HistoryItem", "Ranked", "Reason", "ReasonKind", "Taste", "View", "Weights",
           "diversify", "rerank", "taste_of"]
