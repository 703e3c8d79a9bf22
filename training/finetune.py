"""Fine-tuning of the ImageNet EfficientNet-Lite0 embedder on the catalog, sized for 2 CPU cores.

The recipe, and why:

- **Resolution 112.** The catalog images are 28x28 pixels, so a 112x112 trunk input (4x) keeps all
  their detail while every convolution costs 4x less than at 224. The exported model still takes the
  gateway's 224x224 requests and averages 2x2 pixel boxes inside (``ImageEmbedder.trunk_size``).
- **Frozen early stages, cached.** The stem and the first ``frozen_blocks`` MBConv blocks keep their
  ImageNet weights; their output for each image is computed once (optionally kept on disk) and every
  epoch trains on it. Only the last block and the 1x1 head convolution learn (about 1 M parameters).
- **Loss: normalised softmax** (a cosine classifier): logits = ``scale`` x cos(embedding, category
  proxy), cross-entropy over the categories. The embedding trained is the served one (the L2-normalised
  average of the head's activations), so training pulls each image towards its category's proxy in the
  cosine geometry the catalog search uses. With one label per image and ten categories, a proxy loss
  needs no pair mining and is stable at small batches, unlike contrastive or triplet losses.
- **Selection on held-out train images.** After each epoch, precision@10 of the validation images
  (train split images that are not trained on) against the training images is measured; the best
  epoch is exported. The test split is never read.

Runs are seeded: the same configuration and thread count give the same weights.
"""

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from catalog_sources.fashion_mnist import CLASS_NAMES
from model_export.efficientnet_lite import HEAD_CHANNELS, EfficientNetLite0
from model_export.embedding import (
    BACKBONES,
    DEFAULT_BACKBONE,
    ImageEmbedder,
    find_efficientnet_lite0_weights,
    pooled_embedding,
    read_checkpoint,
)
from training.data import TrainingData, load_training_data, model_inputs

log = logging.getLogger(__name__)
NEIGHBOURS = 10
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class FinetuneConfig:
    """What one fine-tuning run does; the defaults are the run that produced model version 2."""

    train_per_class: int = 1200
    validation_per_class: int = 100
    trunk_size: int = 112
    frozen_blocks: int = 15
    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 1e-3
    proxy_learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    scale: float = 16.0
    seed: int = 0
    threads: int = 2
    feature_batch_size: int = 32


QUICK = FinetuneConfig(train_per_class=20, validation_per_class=5, epochs=2, batch_size=50)


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float
    seconds: float
    validation_precision: float


@dataclass
class FinetuneResult:
    """The fine-tuned embedder, what the run measured, and the validation embeddings it computed."""

    config: FinetuneConfig
    model: ImageEmbedder
    data: TrainingData
    pretrained_precision: float
    epochs: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    validation_embeddings: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    load_average: float = 0.0  # of the machine over the last 15 minutes of the run: it may be shared

    @property
    def best_precision(self) -> float:
        return self.epochs[self.best_epoch - 1].validation_precision


def pretrained_embedder(trunk_size: int) -> ImageEmbedder:
    """EfficientNet-Lite0 with its ImageNet weights, its trunk at ``trunk_size``, in eval mode."""
    spec = BACKBONES[DEFAULT_BACKBONE]
    trunk = EfficientNetLite0(trunk_size)
    trunk.load_state_dict(read_checkpoint(find_efficientnet_lite0_weights()), strict=True)
    return ImageEmbedder(trunk, spec.mean, spec.std, trunk_size).eval()


def lite0_trunk(model: ImageEmbedder) -> EfficientNetLite0:
    """The EfficientNet-Lite0 trunk of a model made by ``pretrained_embedder``."""
    if not isinstance(model.trunk, EfficientNetLite0):
        raise TypeError(f"fine-tuning needs an EfficientNet-Lite0 trunk, got {type(model.trunk).__name__}")
    return model.trunk


def frozen_features(model: ImageEmbedder, blocks: int, data: TrainingData, indices: np.ndarray,
                    batch_size: int) -> torch.Tensor:
    """The output of the stem and the first ``blocks`` blocks for the train-split images at ``indices``."""
    trunk = lite0_trunk(model)
    parts = []
    done = 0
    started = last_report = time.perf_counter()
    with torch.inference_mode():
        for batch in model_inputs(data.split, indices, batch_size):
            features = trunk.stem(model.trunk_input(torch.from_numpy(batch)))
            for block in trunk._blocks[:blocks]:
                features = block(features)
            parts.append(features.contiguous())
            done += len(batch)
            if time.perf_counter() - last_report > PROGRESS_EVERY_S:
                last_report = time.perf_counter()
                log.info("frozen features: %d/%d images (%.0f img/s)", done, len(indices),
                         done / (last_report - started))
    return torch.cat(parts)


def cached_frozen_features(model: ImageEmbedder, config: FinetuneConfig, data: TrainingData,
                           indices: np.ndarray, cache_dir: Path | None) -> torch.Tensor:
    """``frozen_features``, read from / written to ``cache_dir`` when given (keyed by what determines them)."""
    if cache_dir is None:
        return frozen_features(model, config.frozen_blocks, data, indices, config.feature_batch_size)
    weights = find_efficientnet_lite0_weights()
    key = json.dumps([config.trunk_size, config.frozen_blocks, weights.name, weights.stat().st_size,
                      hashlib.sha256(indices.tobytes()).hexdigest()])
    path = cache_dir / f"features-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    if path.exists():
        log.info("frozen features of %d images read from %s", len(indices), path)
        return torch.from_numpy(np.load(path))
    features = frozen_features(model, config.frozen_blocks, data, indices, config.feature_batch_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, features.numpy())
    return features


def trained_modules(model: ImageEmbedder, frozen_blocks: int) -> list[torch.nn.Module]:
    """The modules that learn: the blocks after the frozen ones and the head convolution with its BN."""
    trunk = lite0_trunk(model)
    return [*trunk._blocks[frozen_blocks:], trunk._conv_head, trunk._bn1]


def embed_features(model: ImageEmbedder, frozen_blocks: int, features: torch.Tensor) -> torch.Tensor:
    """The served embedding of images from their cached frozen features."""
    trunk = lite0_trunk(model)
    for block in trunk._blocks[frozen_blocks:]:
        features = block(features)
    return pooled_embedding(trunk.head(features))


def embed_all(model: ImageEmbedder, frozen_blocks: int, features: torch.Tensor, batch_size: int = 512
              ) -> torch.Tensor:
    """``embed_features`` over all rows, in inference mode."""
    with torch.inference_mode():
        return torch.cat([embed_features(model, frozen_blocks, features[start:start + batch_size])
                          for start in range(0, len(features), batch_size)])


def precision_at_k(queries: torch.Tensor, query_labels: torch.Tensor, catalog: torch.Tensor,
                   catalog_labels: torch.Tensor, k: int = NEIGHBOURS) -> float:
    """Mean share of each query's k most cosine-similar catalog rows that have the query's label."""
    neighbours = (queries @ catalog.T).topk(k, dim=1).indices
    return float((catalog_labels[neighbours] == query_labels[:, None]).float().mean())


def finetune(config: FinetuneConfig, cache_dir: Path | None = None) -> FinetuneResult:
    """Fine-tunes the pretrained embedder per ``config`` and returns it with what the run measured."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    data = load_training_data(config.train_per_class, config.validation_per_class, config.seed)
    model = pretrained_embedder(config.trunk_size)
    log.info("training on %d train-split images, validating on %d others; trunk at %d px, %d frozen blocks",
             len(data.train), len(data.validation), config.trunk_size, config.frozen_blocks)
    train_x = cached_frozen_features(model, config, data, data.train, cache_dir)
    validation_x = cached_frozen_features(model, config, data, data.validation, cache_dir)
    train_y = torch.from_numpy(data.split.labels[data.train].astype(np.int64))
    validation_y = torch.from_numpy(data.split.labels[data.validation].astype(np.int64))
    features_s = time.perf_counter() - started

    def validation_precision() -> float:
        return precision_at_k(embed_all(model, config.frozen_blocks, validation_x), validation_y,
                              embed_all(model, config.frozen_blocks, train_x), train_y)

    result = FinetuneResult(config, model, data, validation_precision())
    log.info("pretrained: validation precision@%d %.4f", NEIGHBOURS, result.pretrained_precision)
    modules = trained_modules(model, config.frozen_blocks)
    proxies = torch.nn.Parameter(0.01 * torch.randn(len(CLASS_NAMES), HEAD_CHANNELS))
    optimizer = torch.optim.AdamW(
        [{"params": [p for module in modules for p in module.parameters()], "lr": config.learning_rate},
         {"params": [proxies], "lr": config.proxy_learning_rate}], weight_decay=config.weight_decay)
    batches_per_epoch = len(train_x) // config.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[config.learning_rate, config.proxy_learning_rate],
        total_steps=config.epochs * batches_per_epoch, pct_start=0.1)
    order = torch.Generator().manual_seed(config.seed)
    best_state = {}
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        for module in modules:
            module.train()
        permutation = torch.randperm(len(train_x), generator=order)
        total = 0.0
        for batch in range(batches_per_epoch):
            rows = permutation[batch * config.batch_size:(batch + 1) * config.batch_size]
            cosines = embed_features(model, config.frozen_blocks, train_x[rows]) @ F.normalize(proxies, dim=1).T
            loss = F.cross_entropy(config.scale * cosines, train_y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        model.eval()
        entry = EpochLog(epoch, total / batches_per_epoch, time.perf_counter() - epoch_started,
                         validation_precision())
        result.epochs.append(entry)
        log.info("epoch %d/%d: loss %.4f, %.0f s, validation precision@%d %.4f", epoch, config.epochs,
                 entry.loss, entry.seconds, NEIGHBOURS, entry.validation_precision)
        if not result.best_epoch or entry.validation_precision > result.best_precision:
            result.best_epoch = epoch
            best_state = {name: value.clone() for name, value in model.state_dict().items()}
    model.load_state_dict(best_state)
    result.validation_embeddings = embed_all(model, config.frozen_blocks, validation_x)
    result.seconds = {"data and frozen features": features_s,
                      "training": sum(entry.seconds for entry in result.epochs),
                      "total": time.perf_counter() - started}
    result.load_average = os.getloadavg()[2]
    log.info("best epoch %d: validation precision@%d %.4f (pretrained %.4f)", result.best_epoch, NEIGHBOURS,
             result.best_precision, result.pretrained_precision)
    return result


def card_record(result: FinetuneResult) -> dict[str, object]:
    """The training card's facts as JSON-able data."""
    return {"config": asdict(result.config), "train_images": len(result.data.train),
            "validation_images": len(result.data.validation), "pretrained_precision": result.pretrained_precision,
            "epochs": [asdict(entry) for entry in result.epochs], "best_epoch": result.best_epoch,
            "seconds": result.seconds, "load_average": result.load_average}
