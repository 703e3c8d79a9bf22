"""Export an embedding model into a Triton model repository: <name>/<version>/model.pt and <name>/config.pbtxt."""

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model_export.embedding import DEFAULT_BACKBONE, ImageEmbedder, build_embedding_model
from model_export.triton_config import IMAGE_SIZE, render_config

log = logging.getLogger(__name__)

MODEL_FILENAME = "model.pt"
CONFIG_FILENAME = "config.pbtxt"
# Written next to model.pt by `make finetune` (training/card.py): how the version was trained and checked.
CARD_JSON = "training_card.json"
CARD_MARKDOWN = "training_card.md"
READABLE_BY_ALL = 0o644  # the serving process may run as another user
READABLE_DIRECTORY = 0o755
# Freezing folds BatchNorm into the convolutions, which moves the output by about 1e-6.
MAX_EXPORT_DEVIATION = 1e-4


def to_torchscript(model: ImageEmbedder) -> torch.jit.ScriptModule:
    """The model scripted (its input checks included) and frozen (weights inlined, BatchNorm folded).

    ``optimize_for_inference`` is not applied: it was slower here, and its result is specific to the
    build it ran on and not guaranteed to serialise.
    """
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.script(model.eval()))


def probe_images(batch_size: int = 2) -> torch.Tensor:
    """Fixed pseudo-random uint8 images [N, 224, 224, 3]."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8, generator=generator)


def check_matches(model: ImageEmbedder, exported: torch.jit.ScriptModule) -> int:
    """The embedding dimension, after checking that the exported graph reproduces the eager model."""
    images = probe_images()
    with torch.no_grad():
        expected, actual = model(images), exported(images)
    deviation = (expected - actual).abs().max().item()
    if deviation > MAX_EXPORT_DEVIATION:
        raise RuntimeError(f"the exported graph deviates from the eager model by {deviation:.2e}")
    return actual.shape[1]


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Writes ``target`` through ``write(temporary path)`` and a rename: it is never seen half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(name)
    try:
        write(temporary)
        with temporary.open("rb") as written:
            os.fsync(written.fileno())
        temporary.chmod(READABLE_BY_ALL)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def export_model(repository: Path, name: str, backbone: str = DEFAULT_BACKBONE, version: int = 1,
                 random_weights: bool = False) -> Path:
    """Writes ``<repository>/<name>/<version>/model.pt`` and ``<repository>/<name>/config.pbtxt``.

    Returns the path of model.pt. Raises MissingWeightsError when the ImageNet weights cannot be found
    and ``random_weights`` is not asked for.
    """
    check_version(version)
    started = time.perf_counter()
    model = build_embedding_model(backbone, random_weights)
    recorded_backbone = f"{backbone}-random" if random_weights else backbone
    model_path = export_module(repository, name, model, version, recorded_backbone)
    log.info("exported %s (backbone %s) in %.1f s", model_path, recorded_backbone, time.perf_counter() - started)
    return model_path


def check_version(version: int) -> None:
    if version < 1:
        raise ValueError(f"the model version must be a positive integer, got {version}")


def export_module(repository: Path, name: str, model: ImageEmbedder, version: int, backbone: str) -> Path:
    """Exports an embedding model as ``<repository>/<name>/<version>/model.pt`` with the shared config.pbtxt.

    A new version folder appears whole (written aside, then renamed), so a Triton that polls the
    repository never sees it half-written. Returns the path of model.pt.
    """
    check_version(version)
    exported = to_torchscript(model)
    dim = check_matches(model, exported)
    model_dir = repository / name
    version_dir = model_dir / str(version)
    if version_dir.is_dir():
        write_atomically(version_dir / MODEL_FILENAME, lambda path: torch.jit.save(exported, str(path)))
    else:
        partial = model_dir / f".{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        write_atomically(partial / MODEL_FILENAME, lambda path: torch.jit.save(exported, str(path)))
        partial.chmod(READABLE_DIRECTORY)
        os.replace(partial, version_dir)
    config = render_config(name, backbone, dim)
    write_atomically(model_dir / CONFIG_FILENAME, lambda path: path.write_text(config))
    log.info("wrote %s (D=%d)", version_dir / MODEL_FILENAME, dim)
    return version_dir / MODEL_FILENAME
