"""Where catalog products come from: Fashion-MNIST, or a folder of images described by a CSV file."""

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from catalog_sources.fashion_mnist import Split, load_split
from gateway.images import to_model_input
from gateway.indexer import NewProduct

REQUIRED_COLUMNS = ("product_id", "image", "category")


@dataclass(frozen=True)
class Unreadable:
    """A catalog row that could not be turned into a product, and why."""

    product_id: str
    reason: str


def fashion_mnist(split: Split = "train", directory: Path | None = None,
                  limit: int | None = None) -> tuple[int, Iterator[NewProduct]]:
    """Fashion-MNIST products (ids like fmnist-train-000123, official class names as categories)."""
    data = load_split(split, directory)
    count = len(data) if limit is None else min(limit, len(data))

    def products() -> Iterator[NewProduct]:
        for index in range(count):
            image = to_model_input(Image.fromarray(data.images[index], mode="L"))
            yield NewProduct(data.product_id(index), data.category(index), image)

    return count, products()


def image_folder(csv_path: Path, root: Path | None = None) -> tuple[int, Iterator[NewProduct | Unreadable]]:
    """Products listed in a CSV (product_id, image path, category, then attribute columns).

    Image paths are relative to root (default: the CSV's folder). Unreadable files become Unreadable rows.
    """
    with csv_path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if rows and (missing := [c for c in REQUIRED_COLUMNS if c not in rows[0]]):
        raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)}")
    base = root or csv_path.parent

    def products() -> Iterator[NewProduct | Unreadable]:
        for row in rows:
            attributes = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS and k and v}
            try:
                image = (base / row["image"]).read_bytes()
            except OSError as error:
                yield Unreadable(row["product_id"], f"cannot read {row['image']}: {error.strerror}")
                continue
            yield NewProduct(row["product_id"], row["category"], image, attributes)

    return len(rows), products()
