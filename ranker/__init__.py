"""History-aware re-ranking: numbers in, ordered products with their score parts out (numpy only)."""

from ranker.ranking import Candidate, HistoryItem, Ranked, Weights, history_vector, rerank

__all__ = ["Candidate", "HistoryItem", "Ranked", "Weights", "history_vector", "rerank"]
