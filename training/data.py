"""Training data: a seeded, per-category sample of the Fashion-MNIST *train* split, as the gateway sees it.

The test split is never read here: it holds the queries of the evaluation. Images go through the very
function that turns catalog images into model input when they are indexed (``gateway.images``), so
the model is trained on exactly the pixels it serves.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from catalog_sources.fashion_mnist import CLASS_NAMES, FashionMnistSplit, load_split
from gateway.images import to_model_input


@dataclass(frozen=True)
class TrainingData:
    """Indices into the train split of the training and validation images, and the split itself."""

    split: FashionMnistSplit
    train: np.ndarray
    validation: np.ndarray


def sample_per_category(labels: np.ndarray, train_per_class: int, validation_per_class: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, sorted index sets with ``train_per_class`` / ``validation_per_class`` images of each label.

    Raises ValueError when a label has fewer images than asked for.
    """
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for label in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < train_per_class + validation_per_class:
            raise ValueError(f"category {CLASS_NAMES[label]} has {len(members)} images; "
                             f"{train_per_class + validation_per_class} were asked for")
        train.append(members[:train_per_class])
        validation.append(members[train_per_class:train_per_class + validation_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))


def load_training_data(train_per_class: int, validation_per_class: int, seed: int) -> TrainingData:
    """The train split and the seeded training / validation samples of it."""
    split = load_split("train")
    train, validation = sample_per_category(split.labels, train_per_class, validation_per_class, seed)
    return TrainingData(split, train, validation)


def model_inputs(split: FashionMnistSplit, indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Batches of uint8 [B, 224, 224, 3] model input of the images at ``indices``, in order."""
    for start in range(0, len(indices), batch_size):
        yield np.stack([to_model_input(Image.fromarray(split.images[index], mode="L"))
                        for index in indices[start:start + batch_size]])
