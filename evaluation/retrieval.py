"""Visual retrieval through the served path, and the same retrieval in-process as a cross-check.

Served: each query image is sent as a PNG to the gateway's Recommend (anonymous, so the order is the
visual one): decoded by the gateway, embedded by Triton, searched exactly in Qdrant.
In-process: the same PNG decoded by the same function, embedded by the version's TorchScript file with
torch in this process, searched by brute force against the vectors Qdrant stored; a sample of those
stored vectors is recomputed in-process from the catalog images too.
"""

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from PIL import Image

from catalog_sources.fashion_mnist import FashionMnistSplit
from gateway.catalog import CatalogStore
from gateway.images import preprocess, to_model_input
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc

BATCH_SIZE = 32
RETRIES = 3
RETRIED_CODES = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def png(pixels: np.ndarray) -> bytes:
    """A greyscale image as PNG bytes, as a client would send it."""
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def stratified_queries(split: FashionMnistSplit, per_category: int) -> np.ndarray:
    """The first ``per_category`` images of each category, sorted by index."""
    return np.sort(np.concatenate([np.flatnonzero(split.labels == label)[:per_category]
                                   for label in np.unique(split.labels)]))


@dataclass(frozen=True)
class Served:
    """Results of the served queries: product ids [Q][K], the ``model`` each response named, and how many
    calls were retried after a deadline or overload status (the machine being busy, not a quality matter)."""

    ids: list[list[str]]
    models: list[str]
    seconds: float
    retried: int


async def served_results(stub: pb_grpc.RecommenderStub, images: Sequence[bytes], k: int, concurrency: int = 2,
                         timeout_s: float = 30.0, diversity: pb.Diversity | None = None) -> Served:
    """Recommend(image, limit=k, diversity) for every image, ``concurrency`` at a time, results in query order."""
    ids: list[list[str]] = [[] for _ in images]
    models = ["" for _ in images]
    retried = 0
    pending = iter(range(len(images)))

    async def recommend(index: int) -> pb.RecommendResponse:
        nonlocal retried
        attempt = 0
        while True:
            try:
                request = pb.RecommendRequest(image=images[index], limit=k, diversity=diversity)
                return await stub.Recommend(request, timeout=timeout_s)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRIED_CODES or attempt == RETRIES:
                    raise
            attempt += 1
            retried += 1
            await asyncio.sleep(0.5 * attempt)

    async def worker() -> None:
        for index in pending:
            response = await recommend(index)
            ids[index] = [item.product_id for item in response.items]
            models[index] = response.model

    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Served(ids, models, asyncio.get_running_loop().time() - started, retried)


async def stored_vectors(catalog: CatalogStore, product_ids: Sequence[str], chunk: int = 500) -> np.ndarray:
    """The vectors the catalog stores for ``product_ids``, in that order."""
    rows: list[np.ndarray] = []
    for start in range(0, len(product_ids), chunk):
        found = await catalog.retrieve(list(product_ids[start:start + chunk]))
        rows.extend(found[product_id].vector for product_id in product_ids[start:start + chunk])
    return np.stack(rows)


def embed_in_process(model: torch.jit.ScriptModule, pixels: np.ndarray) -> np.ndarray:
    """Embeddings of uint8 [N, 224, 224, 3] images by the TorchScript model, in this process."""
    with torch.inference_mode():
        return torch.cat([model(torch.from_numpy(pixels[start:start + BATCH_SIZE]))
                          for start in range(0, len(pixels), BATCH_SIZE)]).numpy()


def exact_top_k(queries: np.ndarray, catalog: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] row indices of the catalog vectors most cosine-similar to each query, best first."""
    similarities = queries @ catalog.T
    top = np.argpartition(-similarities, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarities, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


@dataclass(frozen=True)
class InProcess:
    """The in-process retrieval: result ids [Q][K] and how far its vectors are from the served ones."""

    ids: list[list[str]]
    catalog_deviation: float
    checked_catalog_vectors: int


def in_process_results(model_path: str, query_images: Sequence[bytes], catalog_ids: Sequence[str],
                       catalog_vectors: np.ndarray, catalog_pixels: np.ndarray, sample: np.ndarray,
                       k: int) -> InProcess:
    """Retrieval with in-process query embeddings against the stored catalog vectors, whose rows at
    ``sample`` are recomputed from ``catalog_pixels`` ([N, 28, 28]) and compared."""
    model = torch.jit.load(model_path)
    queries = embed_in_process(model, np.stack([preprocess(image) for image in query_images]))
    recomputed = embed_in_process(model, np.stack([to_model_input(Image.fromarray(catalog_pixels[index], mode="L"))
                                                   for index in sample]))
    deviation = float(np.abs(recomputed - catalog_vectors[sample]).max()) if len(sample) else 0.0
    top = exact_top_k(queries, catalog_vectors, k)
    return InProcess([[catalog_ids[index] for index in row] for row in top], deviation, len(sample))


def overlap_at(served: Sequence[Sequence[str]], in_process: Sequence[Sequence[str]], k: int) -> float:
    """Mean share of the top-k ids the two result lists have in common."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(served, in_process, strict=True)]))


async def wait_for_model(stub: pb_grpc.RecommenderStub, image: bytes, version: str, timeout_s: float = 60.0) -> str:
    """Polls Recommend until the response names model ``version``; returns that ``model`` string."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            model = (await stub.Recommend(pb.RecommendRequest(image=image, limit=1), timeout=10)).model
        except grpc.aio.AioRpcError:
            model = ""
        if model.split(" ")[0].endswith(f"/{version}"):
            return model
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the gateway still answers with {model!r} after {timeout_s:.0f} s, "
                               f"not with version {version}")
        await asyncio.sleep(0.2)
