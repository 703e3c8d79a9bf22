"""Operator commands: bulk catalog ingestion, model rollout and rollback, soak and overload runs."""
