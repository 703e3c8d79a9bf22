"""gRPC gateway: visual product recommendations over Triton, Qdrant and Redis (run it with `python -m gateway`)."""
