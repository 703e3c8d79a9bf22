"""What every layer is measured on: the same product photos, and catalog vectors grown from their embeddings."""

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from catalog_sources.fashion_mnist import load_split
from gateway.images import encode_png, preprocess

# Catalog vectors: a mixture of two real embeddings plus Gaussian noise of this norm (cosine ~0.96 to
# the mixture), so neighbourhoods look like a catalog's: dense around real products, never uniform noise.
NOISE_NORM = 0.3
PHOTO_SIDE = 800


@dataclass(frozen=True)
class ImageSet:
    """Fashion-MNIST test photos as the encoded bytes a client sends (PNG, or JPEG for `as_photos`), and as the
    model input the gateway makes.

    `pixels` are decoded from `encoded` by the gateway's own preprocessing, so Triton alone and the gateway
    embed exactly the same tensors.
    """

    encoded: list[bytes]
    pixels: np.ndarray
    categories: list[str]

    def __len__(self) -> int:
        return len(self.encoded)


def load_images(count: int) -> ImageSet:
    """The first `count` Fashion-MNIST test images."""
    split = load_split("test")
    if not 0 < count <= len(split):
        raise ValueError(f"the image set holds 1 to {len(split)} images, not {count}")
    png = [encode_png(split.images[index]) for index in range(count)]
    return ImageSet(png, np.stack([preprocess(data) for data in png]),
                    [split.category(index) for index in range(count)])


def as_photos(images: ImageSet, side: int = PHOTO_SIDE) -> ImageSet:
    """The same products as colour JPEG photos of `side` x `side` pixels, the size a catalog or a phone sends (the
    28-pixel originals make decoding look free)."""
    encoded = []
    for pixels in images.pixels:
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return ImageSet(encoded, np.stack([preprocess(data) for data in encoded]), images.categories)


def perturbed_embeddings(seeds: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` unit vectors near real embeddings, and the index of the seed each one is mostly made of.

    Each is `w·a + (1−w)·b` for two random seeds a, b and w uniform in [0.5, 1], plus noise of norm
    NOISE_NORM, normalised.
    """
    first = rng.integers(len(seeds), size=count)
    second = rng.integers(len(seeds), size=count)
    weight = rng.uniform(0.5, 1.0, size=(count, 1)).astype(np.float32)
    mixed = weight * seeds[first] + (1 - weight) * seeds[second]
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    noise = rng.standard_normal(mixed.shape, dtype=np.float32) * (NOISE_NORM / np.sqrt(seeds.shape[1]))
    vectors = mixed + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, first


def catalog_chunks(seeds: np.ndarray, total: int, chunk: int, seed: int = 0
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The catalog in chunks of `chunk` vectors: (offset, vectors, seed index of each), reproducible."""
    for offset in range(0, total, chunk):
        rng = np.random.default_rng([seed, offset])
        vectors, origin = perturbed_embeddings(seeds, min(chunk, total - offset), rng)
        yield offset, vectors, origin
