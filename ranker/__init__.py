"""History-aware re-ranking: numbers in, ordered products with their score parts out (numpy only)."""

from ranker.ranking import NO_TASTE, Candidate, HistoryItem, Ranked, Taste, Weights, rerank, taste_of

__all__ = ["NO_TASTE", "Candidate", "HistoryItem", "Ranked", "Taste", "Weights", "rerank", "taste_of"]
