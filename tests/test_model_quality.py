"""Retrieval quality of the exported default model on Fashion-MNIST, against the same net untrained.

Sample: the first 100 test images of each of the 10 classes (1,000 images, no randomness). Each image,
28x28 greyscale, becomes RGB and is resized to 224x224 (PIL bilinear). Metric: precision@10, the share
of the 10 nearest other images (cosine) that are in the query's category, averaged over the queries.
"""

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catalog_sources.fashion_mnist import load_split
from model_export.embedding import DEFAULT_BACKBONE
from model_export.export import export_model
from model_export.triton_config import IMAGE_SIZE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
    pytest.mark.usefixtures("two_torch_threads"),
]

log = logging.getLogger(__name__)

PER_CLASS = 100
NEIGHBOURS = 10
BATCH_SIZE = 32
MIN_PRECISION = 0.72
MIN_MARGIN_OVER_RANDOM = 0.05


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    """The first PER_CLASS test images of each class, as uint8 [N, 224, 224, 3], and their labels."""
    test = load_split("test")
    indices = np.concatenate([np.flatnonzero(test.labels == label)[:PER_CLASS] for label in range(10)])
    images = np.stack([
        np.asarray(Image.fromarray(test.images[index]).convert("RGB")
                   .resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
        for index in indices
    ])
    return images, test.labels[indices]


def embed(model_path: Path, images: np.ndarray) -> torch.Tensor:
    model = torch.jit.load(str(model_path))
    with torch.inference_mode():
        return torch.cat([model(torch.from_numpy(images[start:start + BATCH_SIZE]))
                          for start in range(0, len(images), BATCH_SIZE)])


def precision_at_k(embeddings: torch.Tensor, labels: np.ndarray, k: int) -> float:
    """Mean share of same-label items among each row's k most cosine-similar other rows."""
    similarities = embeddings @ embeddings.T
    similarities.fill_diagonal_(-torch.inf)
    neighbours = similarities.topk(k, dim=1).indices.numpy()
    return float((labels[neighbours] == labels[:, None]).mean())


def retrieval_precision(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray], random_weights: bool) -> float:
    images, labels = sample
    started = time.perf_counter()
    model_path = export_model(tmp_path, "product_embedder", DEFAULT_BACKBONE, random_weights=random_weights)
    precision = precision_at_k(embed(model_path, images), labels, NEIGHBOURS)
    log.info("%s%s: precision@%d %.3f on %d images in %.0f s", DEFAULT_BACKBONE,
                " (random weights)" if random_weights else "", NEIGHBOURS, precision, len(labels),
                time.perf_counter() - started)
    return precision


def test_precision_at_k_counts_same_label_neighbours() -> None:
    embeddings = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]))
    assert precision_at_k(embeddings, np.array([0, 0, 1, 1]), 1) == 1.0
    assert precision_at_k(embeddings, np.array([0, 1, 0, 1]), 1) == 0.0


def test_imagenet_weights_retrieve_same_category_neighbours(tmp_path: Path,
                                                          sample: tuple[np.ndarray, np.ndarray]) -> None:
    pretrained = retrieval_precision(tmp_path / "imagenet", sample, random_weights=False)
    torch.manual_seed(0)
    untrained = retrieval_precision(tmp_path / "random", sample, random_weights=True)
    assert pretrained >= MIN_PRECISION, f"precision@{NEIGHBOURS} with ImageNet weights: {pretrained:.3f}"
    assert untrained <= pretrained - MIN_MARGIN_OVER_RANDOM, \
        f"precision@{NEIGHBOURS}: ImageNet weights {pretrained:.3f}, random weights {untrained:.3f}"
