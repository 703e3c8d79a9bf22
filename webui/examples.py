"""Example query photos for the page: held-out Fashion-MNIST test images (never in the catalog), by id."""

import asyncio
import re
from pathlib import Path
from typing import cast

import numpy as np

from catalog_sources.fashion_mnist import FashionMnistSplit, Split, load_split
from gateway.images import encode_png

# The inverse of FashionMnistSplit.product_id, e.g. "fmnist-train-000123".
PRODUCT_ID = re.compile(r"fmnist-(train|test)-(\d{6})")


class FashionMnistImages:
    """PNG images of Fashion-MNIST images by id; each split is loaded on first use, off the event loop."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._splits: dict[Split, FashionMnistSplit] = {}
        self._lock = asyncio.Lock()

    async def png(self, product_id: str) -> bytes | None:
        """The product's image as PNG, or None when the id is not a Fashion-MNIST product."""
        match = PRODUCT_ID.fullmatch(product_id)
        if match is None:
            return None
        split = await self._split(cast(Split, match[1]))
        index = int(match[2])
        return encode_png(split.images[index]) if index < len(split) else None

    async def examples(self) -> list[tuple[str, str]]:
        """(product_id, category) of the first held-out test image of each category."""
        split = await self._split("test")
        _, first_of_each = np.unique(split.labels, return_index=True)
        return [(split.product_id(index), split.category(index)) for index in first_of_each]

    async def _split(self, name: Split) -> FashionMnistSplit:
        async with self._lock:
            if name not in self._splits:
                self._splits[name] = await asyncio.to_thread(load_split, name, self._directory)
            return self._splits[name]
