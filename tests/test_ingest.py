"""The bulk ingestion CLI (`make index`) against the real tritonserver and the embedded Qdrant engine."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from catalog_sources.fashion_mnist import load_split
from gateway.config import Settings
from gateway.domain import ModelInfo
from gateway.images import encode_png
from harness.gateway import served_catalog

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
MODEL = ModelInfo("product_embedder", "1", "efficientnet_lite0", 1280)


def index_folder(csv_path: Path, data_dir: Path, triton_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_URL": triton_url, "DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "ops.index", "folder", "--csv", str(csv_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def product_folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    test = load_split("test")
    rows = []
    for index in range(4):
        (images / f"{index}.png").write_bytes(encode_png(test.images[index]))
        rows.append({"product_id": f"sku-{index}", "image": f"images/{index}.png",
                     "category": test.category(index), "brand": f"brand-{index}"})
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows.append({"product_id": "sku-corrupt", "image": "images/corrupt.jpg", "category": "Bag", "brand": ""})
    rows.append({"product_id": "sku-missing", "image": "images/missing.png", "category": "Bag", "brand": ""})
    csv_path = tmp_path / "products.csv"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["product_id", "image", "category", "brand"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


async def test_folder_ingestion_skips_bad_files_and_resumes_without_duplicates(product_folder, tmp_path,
                                                                                triton_server):
    data_dir = tmp_path / "data"
    first = index_folder(product_folder, data_dir, triton_server.grpc_url)
    assert first.returncode == 0, first.stderr
    assert "skipped sku-corrupt: image could not be decoded" in first.stderr
    assert "skipped sku-missing: cannot read images/missing.png" in first.stderr
    assert "4 stored, 0 already present, 2 skipped" in first.stderr

    again = index_folder(product_folder, data_dir, triton_server.grpc_url)
    assert again.returncode == 0, again.stderr
    assert "0 stored, 4 already present, 2 skipped" in again.stderr

    catalog = await served_catalog(Settings(data_dir=data_dir))
    await catalog.open(MODEL)
    try:
        assert await catalog.count() == 4
        stored = await catalog.retrieve(["sku-0", "sku-3", "sku-corrupt"], with_vectors=False)
    finally:
        await catalog.close()
    assert set(stored) == {"sku-0", "sku-3"}
    assert all(0 < item.neighbour_similarity <= 1 for item in stored.values()), "set once the load is done"
    assert stored["sku-3"].attributes == {"brand": "brand-3"}
