"""A Triton repository with two versions of the embedder, for the rollout and evaluation tests.

Version 1 is the exported ImageNet model of ``model_repository/`` (``make model``). Version 2 is the same
network with its trunk at 112 px: a cheap stand-in for the model ``make finetune`` exports, with other
embeddings and the same config, as a fine-tuned version has.
"""

from pathlib import Path

from model_export.embedding import DEFAULT_BACKBONE
from model_export.export import export_module
from stack.triton import with_versions
from tests.triton_fixtures import MODEL_REPOSITORY
from training.finetune import pretrained_embedder

MODEL_NAME = "product_embedder"
STAND_IN_TRUNK_SIZE = 112


def export_stand_in(repository: Path, version: int) -> Path:
    """Exports the 112-px ImageNet embedder as ``version`` of the model in ``repository``."""
    return export_module(repository, MODEL_NAME, pretrained_embedder(STAND_IN_TRUNK_SIZE), version, DEFAULT_BACKBONE)


def version_1_repository(target: Path) -> Path:
    """``target`` holding version 1 (linked from model_repository/) and a copy of its config, which an export of
    another version into ``target`` rewrites."""
    with_versions(MODEL_REPOSITORY, target, ("1",))
    config = target / MODEL_NAME / "config.pbtxt"
    text = config.read_text()
    config.unlink()
    config.write_text(text)
    return target


def two_version_repository(target: Path) -> Path:
    """``target`` holding version 1 (linked from model_repository/) and the stand-in version 2."""
    export_stand_in(version_1_repository(target), 2)
    return target
