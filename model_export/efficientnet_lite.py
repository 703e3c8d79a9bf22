"""EfficientNet-Lite0 with the parameter names of the published lukemelas-style ImageNet checkpoint.

Lite differs from EfficientNet-B0 by ReLU6 instead of swish and no squeeze-excitation. Convolutions use
TensorFlow "SAME" padding, computed once for the fixed input size (asymmetric for stride 2).
"""

import math
from typing import Final

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000
# (repeats, kernel, stride, expand ratio, input channels, output channels) of the seven stages.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis of length ``size``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_conv2d(in_channels: int, out_channels: int, kernel: int, size: int, stride: int = 1,
                groups: int = 1) -> nn.Conv2d:
    """Bias-free Conv2d with TensorFlow "SAME" padding for a square input of the given size.

    Symmetric padding is the convolution's own; asymmetric padding (stride 2 on an even size: one pixel more
    after than before) is a WidenedConv2d. Either way no input is copied into a padded tensor.
    """
    before, after = same_padding(size, kernel, stride)
    if before == after:
        return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False, padding=before)
    if after != before + 1:
        raise ValueError(f"SAME padding ({before}, {after}) is neither symmetric nor one pixel more after")
    return WidenedConv2d(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False, padding=after)


class WidenedConv2d(nn.Conv2d):
    """A convolution padded one pixel more after than before: symmetric padding of `after` around the kernel
    widened by a leading row and column of zeros. The same sums, bit for bit, as padding the input (which cost
    13 % of the forward time at batch 4); `weight` keeps the checkpoint's shape and freezing makes the widened
    kernel a constant."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, F.pad(self.weight, (1, 0, 1, 0)), self.bias)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with TensorFlow's epsilon, as the checkpoint was trained with."""
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual: optional 1x1 expansion, depthwise conv, 1x1 projection, identity skip."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int,
                 size: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        expand = expand_ratio != 1
        self._expand_conv = same_conv2d(in_channels, hidden, 1, size) if expand else None
        self._bn0 = batch_norm(hidden) if expand else None
        self._depthwise_conv = same_conv2d(hidden, hidden, kernel, size, stride=stride, groups=hidden)
        self._bn1 = batch_norm(hidden)
        self._project_conv = same_conv2d(hidden, out_channels, 1, math.ceil(size / stride))
        self._bn2 = batch_norm(out_channels)
        self.skip: Final[bool] = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self._expand_conv is not None and self._bn0 is not None:
            x = F.relu6(self._bn0(self._expand_conv(x)), inplace=True)
        x = F.relu6(self._bn1(self._depthwise_conv(x)), inplace=True)
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    """Normalised NCHW images -> the head's feature map [N, 1280, size/32, size/32] after BN and ReLU6.

    ``_fc`` is the ImageNet classifier; the embedding does not use it, it is kept so the published
    checkpoint loads with ``strict=True``.
    """

    def __init__(self, image_size: int) -> None:
        super().__init__()
        size = image_size
        self._conv_stem = same_conv2d(3, STEM_CHANNELS, 3, size, stride=2)
        self._bn0 = batch_norm(STEM_CHANNELS)
        size = math.ceil(size / 2)
        blocks: list[MBConvBlock] = []
        for repeats, kernel, stride, expand_ratio, in_channels, out_channels in STAGES:
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                block_in = in_channels if index == 0 else out_channels
                blocks.append(MBConvBlock(block_in, out_channels, kernel, block_stride, expand_ratio, size))
                size = math.ceil(size / block_stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = same_conv2d(STAGES[-1][-1], HEAD_CHANNELS, 1, size)
        self._bn1 = batch_norm(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, IMAGENET_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for block in self._blocks:
            x = block(x)
        return self.head(x)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """The stem convolution's activations, the input of the first block."""
        return F.relu6(self._bn0(self._conv_stem(images)), inplace=True)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The head's activations [N, 1280, h, w] from the last block's output."""
        return F.relu6(self._bn1(self._conv_head(features)), inplace=True)
