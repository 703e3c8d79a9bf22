"""Fashion-MNIST loader: the installed files, and small missing or corrupt copies."""

import gzip
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from catalog_sources.fashion_mnist import CLASS_NAMES, Split, default_dir, load_split

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
ALL_FILES = (
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
)


def idx(magic: int, shape: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(f">I{len(shape)}I", magic, *shape) + data


def write_test_split(
    folder: Path, images: bytes | None = None, labels: bytes | None = None
) -> Path:
    """A valid three-item test split in folder, with either file's uncompressed content replaced."""
    pixels = np.arange(3 * 28 * 28, dtype=np.uint8).tobytes()
    default_images = idx(0x803, (3, 28, 28), pixels)
    default_labels = idx(0x801, (3,), bytes([0, 9, 4]))
    contents = (
        default_images if images is None else images,
        default_labels if labels is None else labels,
    )
    for name, content in zip(TEST_FILES, contents):
        (folder / name).write_bytes(gzip.compress(content))
    return folder


def test_the_installed_splits_have_the_official_sizes_and_labels() -> None:
    sizes: dict[Split, int] = {"train": 60_000, "test": 10_000}
    for split, size in sizes.items():
        data = load_split(split, SYSTEM_DIR)
        assert len(data) == size
        assert data.images.shape == (size, 28, 28) and data.images.dtype == np.uint8
        assert data.labels.shape == (size,) and data.labels.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(data.labels), [size // 10] * 10)
        assert data.images.max() == 255 and data.images.mean() > 50


def test_items_have_category_names_and_product_ids() -> None:
    test = load_split("test", SYSTEM_DIR)
    assert CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"
    assert len(CLASS_NAMES) == 10
    assert test.category(0) == "Ankle boot"  # the first t10k item is an ankle boot
    assert test.product_id(123) == "fmnist-test-000123"
    assert load_split("train", SYSTEM_DIR).product_id(59_999) == "fmnist-train-059999"


def test_a_small_valid_split_loads(tmp_path: Path) -> None:
    data = load_split("test", write_test_split(tmp_path))
    assert len(data) == 3
    assert [data.category(i) for i in range(3)] == ["T-shirt/top", "Ankle boot", "Coat"]
    assert data.images[1, 0, 0] == (28 * 28) % 256


def test_the_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test_split(tmp_path)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert default_dir() == tmp_path
    assert len(load_split("test")) == 3
    monkeypatch.delenv("FASHION_MNIST_DIR")
    assert default_dir() == SYSTEM_DIR


def test_a_missing_file_says_how_to_get_the_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        load_split("train", tmp_path)
    message = str(missing.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert f"set FASHION_MNIST_DIR to a folder holding {ALL_FILES}" in message


@pytest.mark.parametrize(
    ("images", "labels", "problem"),
    [
        (idx(0x801, (30,), bytes(30)), None, "magic number is 0x00000801, expected 0x00000803"),
        (idx(0x803, (3, 28, 28), bytes(100)), None, "promises 2352 data bytes but it holds 100"),
        (b"\x00\x00\x08", None, "it holds 3 bytes, less than an IDX header"),
        (idx(0x803, (3, 27, 29), bytes(3 * 27 * 29)), None, "images are 27x29 pixels, not 28x28"),
        (None, idx(0x801, (2,), bytes(2)), "it has 2 labels for 3 images"),
        (None, idx(0x801, (3,), bytes([1, 2, 10])), "label 10 is not a class (0-9)"),
    ],
)
def test_corrupt_content_is_named(
    tmp_path: Path, images: bytes | None, labels: bytes | None, problem: str
) -> None:
    write_test_split(tmp_path, images, labels)
    with pytest.raises(ValueError, match="is corrupt: ") as corrupt:
        load_split("test", tmp_path)
    assert problem in str(corrupt.value)
    assert "dataset-fashion-mnist" in str(corrupt.value)


@pytest.mark.parametrize(
    "damage", [lambda data: b"not gzip at all", lambda data: data[: len(data) // 2]]
)
def test_a_damaged_gzip_file_is_named(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    write_test_split(tmp_path)
    labels = tmp_path / TEST_FILES[1]
    labels.write_bytes(damage(labels.read_bytes()))
    expected = f"{labels} is corrupt: it is not a complete gzip file"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_split("test", tmp_path)
