"""gRPC gateway: visual product recommendations over Triton, Qdrant and Redis."""
