"""Writes the request files the load profiles send (ghz and k6 read the same files).

The queries are Fashion-MNIST test images (never in the catalog) and catalog products among the
first CATALOG_PREFIX training images, which every catalog built by `make run` or `make index` holds.
Run from the repository root: `PYTHONPATH=. .venv/bin/python deploy/load/make_data.py [--out DIR]`.
"""

import argparse
import base64
import io
import json
from pathlib import Path

from PIL import Image

from catalog_sources.fashion_mnist import load_split

OUT_DIR = Path(__file__).resolve().parent / "data"
CATALOG_PREFIX = 64  # product ids used here are below this index
QUERY_IMAGES = 8
USERS = 8
VIEWS_PER_USER = 3
LIMIT = 10


def png_base64(pixels) -> str:
    """A greyscale PNG, base64-encoded as protobuf's JSON mapping wants `bytes` fields."""
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG", optimize=True)
    return base64.b64encode(encoded.getvalue()).decode()


def user(index: int) -> str:
    return f"load-user-{index}"


def request_files() -> dict[str, list[dict]]:
    """File name → the JSON requests in it (recsys.v1 messages in protobuf's JSON mapping)."""
    test, train = load_split("test"), load_split("train")
    catalog_ids = [train.product_id(index) for index in range(CATALOG_PREFIX)]
    return {
        "recommend-image.json": [
            {"image": png_base64(test.images[index]), "limit": LIMIT, **({"userId": user(index)} if index % 2 else {})}
            for index in range(QUERY_IMAGES)],
        "recommend-product.json": [
            {"productId": catalog_ids[index * 7], "limit": LIMIT} for index in range(QUERY_IMAGES)],
        "recommend-history.json": [{"userId": user(index), "limit": LIMIT} for index in range(USERS)],
        "record-views.json": [
            {"userId": user(index), "productId": catalog_ids[(index * VIEWS_PER_USER + view) * 2]}
            for index in range(USERS) for view in range(VIEWS_PER_USER)],
    }


def write(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, requests in request_files().items():
        (out_dir / name).write_text(json.dumps(requests, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    write(parser.parse_args().out)


if __name__ == "__main__":
    main()
