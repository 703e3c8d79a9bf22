"""Fine-tuning in its quick mode: the whole path (data, cached features, training, export, card) in seconds."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import training.data
from catalog_sources.fashion_mnist import FashionMnistSplit, Split
from model_export.export import MAX_EXPORT_DEVIATION
from model_export.triton_config import IMAGE_SIZE
from training.card import CARD_JSON, CARD_MARKDOWN, export_version
from training.data import sample_per_category
from training.finetune import QUICK, FinetuneResult, finetune, trained_modules

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
    pytest.mark.usefixtures("two_torch_threads"),
]


def test_the_sample_is_per_category_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 30)
    train, validation = sample_per_category(labels, 20, 5, seed=3)
    assert np.bincount(labels[train]).tolist() == [20] * 10
    assert np.bincount(labels[validation]).tolist() == [5] * 10
    assert not set(train) & set(validation)
    again, _ = sample_per_category(labels, 20, 5, seed=3)
    assert np.array_equal(train, again)
    with pytest.raises(ValueError, match="has 30 images; 31 were asked for"):
        sample_per_category(labels, 30, 1, seed=0)


@pytest.fixture(scope="module")
def splits_read() -> list[str]:
    return []


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, splits_read: list[str]) -> tuple[FinetuneResult, Path]:
    """A quick fine-tune, recording which Fashion-MNIST splits it reads; (result, feature cache folder)."""
    original = training.data.load_split

    def recording_load_split(split: Split) -> FashionMnistSplit:
        splits_read.append(split)
        return original(split)

    patch = pytest.MonkeyPatch()
    patch.setattr(training.data, "load_split", recording_load_split)
    try:
        cache = tmp_path_factory.mktemp("features")
        return finetune(QUICK, cache), cache
    finally:
        patch.undo()


def test_training_reads_the_train_split_only_and_learns(quick_run: tuple[FinetuneResult, Path],
                                                        splits_read: list[str]) -> None:
    result, _ = quick_run
    assert splits_read == ["train"]
    assert len(result.data.train) == 10 * QUICK.train_per_class
    assert not set(result.data.train) & set(result.data.validation)
    assert len(result.epochs) == QUICK.epochs
    assert result.epochs[-1].loss < result.epochs[0].loss
    assert 1 <= result.best_epoch <= QUICK.epochs
    assert result.best_precision == max(entry.validation_precision for entry in result.epochs)


def test_a_second_run_from_the_cached_features_gives_the_same_weights(quick_run: tuple[FinetuneResult, Path]
                                                                       ) -> None:
    result, cache = quick_run
    assert len(list(cache.glob("features-*.npy"))) == 2, "training and validation features are cached"
    again = finetune(QUICK, cache)
    for first, second in zip(trained_modules(result.model, QUICK.frozen_blocks),
                             trained_modules(again.model, QUICK.frozen_blocks)):
        for a, b in zip(first.state_dict().values(), second.state_dict().values()):
            assert torch.equal(a, b)


def test_export_writes_a_servable_version_with_its_card_and_keeps_versions_immutable(
        quick_run: tuple[FinetuneResult, Path], tmp_path: Path) -> None:
    result, _ = quick_run
    model_path = export_version(result, tmp_path, "product_embedder", 2)
    assert model_path == tmp_path / "product_embedder" / "2" / "model.pt"
    assert "num_versions: 2" in (tmp_path / "product_embedder" / "config.pbtxt").read_text()
    card = json.loads((model_path.parent / CARD_JSON).read_text())
    assert card["model"] == "product_embedder/2"
    assert card["train_images"] == len(result.data.train)
    assert card["export_deviation"] <= MAX_EXPORT_DEVIATION
    assert 0 < card["trained_parameters"] < card["parameters"]
    assert "test* split" in (model_path.parent / CARD_MARKDOWN).read_text()
    exported = torch.jit.load(str(model_path))
    with torch.inference_mode():
        vectors = exported(torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, 3, dtype=torch.uint8))
    assert vectors.shape == (2, 1280)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(FileExistsError, match="immutable"):
        export_version(result, tmp_path, "product_embedder", 2)
