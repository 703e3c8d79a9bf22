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
from ranker.rules import NO_RULES, Boost, RecencyDecay, Rules, RuleScore

__all__ = ["NO_RULES", "NO_TASTE", "Boost", "Candidate", "HistoryItem", "Ranked", "Reason", "ReasonKind",
           "RecencyDecay", "RuleScore", "Rules", "Taste", "View", "Weights", "diversify", "rerank", "taste_of"]
