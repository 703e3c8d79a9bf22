"""Diversity and grouping: what MMR and group_by change in the served lists, and what they cost in precision.

A subset of the retrieval queries is sent again with each of :data:`SETTINGS`; each list of 10 is measured by its
precision (same category as the query), its intra-list similarity (mean cosine similarity between its items, from
the vectors the catalog stores), the number of categories it shows, and the catalog coverage of all lists (the
share of catalog products shown at least once).
"""

from collections.abc import Sequence

import numpy as np

from evaluation.retrieval import served_results
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc

K = 10
# Every QUERY_STRIDE-th retrieval query is sent with each setting.
QUERY_STRIDE = 4
SETTINGS = {
    "ranking order": None,
    "MMR lambda 0.8": pb.Diversity(mmr_lambda=0.8),
    "MMR lambda 0.5": pb.Diversity(mmr_lambda=0.5),
    "at most 5 per category": pb.Diversity(group_by="category", max_per_group=5),
}


async def measure_diversity(stub: pb_grpc.RecommenderStub, images: Sequence[bytes], labels: np.ndarray,
                            catalog_ids: Sequence[str], catalog_labels: np.ndarray, vectors: np.ndarray
                            ) -> dict[str, dict[str, float]]:
    """Per setting: precision@10, intra-list similarity, categories per list and coverage (see the module)."""
    row_of = {product_id: row for row, product_id in enumerate(catalog_ids)}
    queries = list(range(0, len(images), QUERY_STRIDE))
    results = {}
    for name, diversity in SETTINGS.items():
        served = await served_results(stub, [images[i] for i in queries], K, diversity=diversity)
        rows = [[row_of[product_id] for product_id in ids] for ids in served.ids]
        results[name] = {
            "precision": float(np.mean([np.mean(catalog_labels[r] == labels[q]) for r, q in zip(rows, queries)])),
            "intra_list_similarity": float(np.mean([intra_list_similarity(vectors[r]) for r in rows])),
            "categories_per_list": float(np.mean([len(set(catalog_labels[r])) for r in rows])),
            "coverage": len({row for r in rows for row in r}) / len(catalog_ids),
        }
    return results


def intra_list_similarity(unit_vectors: np.ndarray) -> float:
    """Mean cosine similarity over the distinct pairs of a list's items (unit vectors, one per row)."""
    count = len(unit_vectors)
    if count < 2:
        return 0.0
    similarities = unit_vectors @ unit_vectors.T
    return float((similarities.sum() - np.trace(similarities)) / (count * (count - 1)))
