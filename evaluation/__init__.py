"""Recommendation quality: retrieval, personalisation and latency measured through the served path."""
