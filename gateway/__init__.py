"""gRPC gateway: visual product recommendations over Triton, Qdrant and Redis."""

import os

# numpy's OpenBLAS keeps one worker thread per core spinning after every matrix product. The gateway's
# products are small (a query against 50-100 candidates) and gain nothing from threads, while the
# spinning thread took a third of a core under load on 2 cores (`make bench`, README: Performance).
# It has to be set before numpy is first imported; an OPENBLAS_NUM_THREADS from the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
