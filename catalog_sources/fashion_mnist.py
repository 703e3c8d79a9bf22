"""Fashion-MNIST as a product catalog: the four gzipped IDX files, read and validated.

IDX format: a big-endian uint32 magic number (0x00000803 for images, 0x00000801 for labels), one
big-endian uint32 per dimension, then the uint8 samples in row-major order.
"""

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIR_VARIABLE = "FASHION_MNIST_DIR"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIDE = 28

Split = Literal["train", "test"]
_FILES: dict[Split, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


@dataclass(frozen=True)
class FashionMnistSplit:
    """One split: read-only uint8 images [N, 28, 28] (light product on black) and labels [N]."""

    split: Split
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def category(self, index: int) -> str:
        """Class name of the item at index."""
        return CLASS_NAMES[self.labels[index]]

    def product_id(self, index: int) -> str:
        """Stable product id of the item at index, e.g. "fmnist-test-000123"."""
        return f"fmnist-{self.split}-{index:06d}"


def default_dir() -> Path:
    """$FASHION_MNIST_DIR if set, else where the dataset-fashion-mnist package puts the files."""
    return Path(os.environ.get(DIR_VARIABLE) or SYSTEM_DIR)


def load_split(split: Split, directory: Path | None = None) -> FashionMnistSplit:
    """Read and validate one split from directory (default: ``default_dir()``).

    Raises FileNotFoundError, saying how to get the files, when one is missing, and ValueError
    naming the file and the problem when one is corrupt.
    """
    folder = default_dir() if directory is None else directory
    images_name, labels_name = _FILES[split]
    images = _read_idx(folder / images_name, _IMAGES_MAGIC)
    labels = _read_idx(folder / labels_name, _LABELS_MAGIC)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        height, width = images.shape[1:]
        raise _corrupt(folder / images_name, f"its images are {height}x{width} pixels, not 28x28")
    if len(images) != len(labels):
        raise _corrupt(
            folder / labels_name, f"it has {len(labels)} labels for {len(images)} images"
        )
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise _corrupt(folder / labels_name, f"label {labels.max()} is not a class (0-9)")
    return FashionMnistSplit(split=split, images=images, labels=labels)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """The array stored in a gzipped IDX file with the given magic number (which fixes ndim)."""
    try:
        compressed = path.read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"Fashion-MNIST file {path} is missing. Install the data set with "
            f"`sudo apt-get install dataset-fashion-mnist`, or set {DIR_VARIABLE} to a folder "
            f"holding {', '.join(name for names in _FILES.values() for name in names)}."
        ) from exc
    try:
        raw = gzip.decompress(compressed)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"it is not a complete gzip file ({exc})") from exc
    ndim = magic & 0xFF
    header_size = 4 * (1 + ndim)
    if len(raw) < header_size:
        raise _corrupt(path, f"it holds {len(raw)} bytes, less than an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _corrupt(path, f"its magic number is 0x{found:08x}, expected 0x{magic:08x}")
    shape = tuple(int(size) for size in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data_size = len(raw) - header_size
    if data_size != math.prod(shape):
        raise _corrupt(
            path, f"its header promises {math.prod(shape)} data bytes but it holds {data_size}"
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(shape)


def _corrupt(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"Fashion-MNIST file {path} is corrupt: {problem}. Replace it with the original "
        f"(`sudo apt-get install --reinstall dataset-fashion-mnist`)."
    )
