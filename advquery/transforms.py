"""Image transformations a shared photo meets, on (N, 3, H, W) tensors in [0, 1].

Platforms re-compress, resize and crop photos; robustness experiments apply the same edits to
query files (``advquery eval --transform``) and robust attacks optimise through them.
A transformation is written as a spec, steps separated by commas and applied in order::

    jpeg:75              JPEG re-compression at quality 75 (PIL; 4:2:0 below quality 90)
    resize:0.5           resize both sides by a factor (50 % also written resize:50%)
    crop:0.8             central crop keeping 80 % of the width and of the height
    blur:1.5             Gaussian blur, sigma in pixels
    jpeg:75,resize:0.5   JPEG first, then half size

``resize`` and ``blur`` are differentiable; ``jpeg`` is not, but :func:`straight_through`
makes any transformation usable inside an attack: the forward pass sees the real
transformed image, the backward pass treats the transformation as the identity.
"""
import io as _io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Box = tuple[float, float, float, float]


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid k / 255 (what saving as PNG keeps)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def jpeg_round_trip(x: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Encode each image as JPEG (PIL, 4:4:4 at quality >= 90 as advquery saves) and decode it again."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    out = []
    for img in x.detach():
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        buf = _io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
        buf.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1))
    return torch.stack(out).to(x.device, x.dtype) / 255


def straight_through(x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``transform(x)`` in the forward pass, gradient of the identity in the backward pass."""
    return x + (transform(x.detach()) - x).detach()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (kernel radius 3 sigma, reflected borders), differentiable."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1, 1, 1)
    pad = min(radius, x.shape[-2] - 1, x.shape[-1] - 1)
    if pad < radius:  # tiny images: shrink the kernel to what reflection can pad
        kernel = kernel[..., radius - pad:radius + pad + 1]
        kernel = kernel / kernel.sum(dim=-1, keepdim=True)
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), kernel, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), kernel.transpose(-1, -2), groups=x.shape[1])


@dataclass(frozen=True)
class Transform:
    """One step of a transformation spec: ``kind`` (jpeg, resize, crop, blur) and its value."""

    kind: str
    value: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "jpeg":
            return jpeg_round_trip(x, int(self.value))
        if self.kind == "blur":
            return gaussian_blur(x, self.value)
        h, w = self.shape(tuple(x.shape[-2:]))
        if self.kind == "resize":
            return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=self.value < 1)
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        return x[..., top:top + h, left:left + w]

    def shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Image (H, W) after this step."""
        if self.kind in ("resize", "crop"):
            return tuple(max(1, round(s * self.value)) for s in shape)
        return shape

    def map_box(self, box: Box, shape: tuple[int, int]) -> Box | None:
        """Where a bounding box of an image of ``shape`` lies after this step (None: cropped away)."""
        h, w = shape
        nh, nw = self.shape(shape)
        x1, y1, x2, y2 = box
        if self.kind == "resize":
            return x1 * nw / w, y1 * nh / h, x2 * nw / w, y2 * nh / h
        if self.kind == "crop":
            top, left = (h - nh) // 2, (w - nw) // 2
            x1, y1 = max(0, x1 - left), max(0, y1 - top)
            x2, y2 = min(nw, x2 - left), min(nh, y2 - top)
            return (x1, y1, x2, y2) if x2 - x1 >= 1 and y2 - y1 >= 1 else None
        return box


LIMITS = {"jpeg": (1, 100), "resize": (0.01, 10), "crop": (0.01, 1), "blur": (0.01, 50)}


@dataclass(frozen=True)
class TransformChain:
    """Transformations applied in order, as a platform would (see the module docstring for specs)."""

    steps: tuple[Transform, ...]

    def __str__(self) -> str:
        return ",".join(f"{s.kind}:{s.value:g}" for s in self.steps) or "none"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The transformed images; every intermediate result is saved as 8-bit, as files are."""
        for step in self.steps:
            x = quantise(step(x))
        return x

    def apply(self, rgb: np.ndarray, box: Box | None = None) -> tuple[np.ndarray, Box | None]:
        """A decoded (H, W, 3) uint8 photo and its bounding box after all steps (a box cropped away
        entirely becomes None: the whole transformed photo)."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
        out = (self(x)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return np.ascontiguousarray(out), self.map_box(box, rgb.shape[:2])

    def map_box(self, box: Box | None, shape: tuple[int, int]) -> Box | None:
        """The bounding box after all steps (None when there was none or it was cropped away)."""
        for step in self.steps:
            if box is None:
                return None
            box = step.map_box(box, shape)
            shape = step.shape(shape)
        return box


def parse_transform(spec: str) -> TransformChain:
    """Parse a spec such as ``jpeg:75,resize:0.5`` (ValueError naming the bad part)."""
    steps = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, text = part.partition(":")
        kind = kind.strip().lower()
        if kind not in LIMITS:
            raise ValueError(f"unknown transformation {kind!r} in {spec!r}; use {', '.join(LIMITS)}")
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"{part!r} in {spec!r}: expected {kind}:NUMBER") from None
        lo, hi = LIMITS[kind]
        if not lo <= value <= hi or (kind == "jpeg" and value != int(value)):
            raise ValueError(f"{part!r} in {spec!r}: {kind} must be {'an integer ' if kind == 'jpeg' else ''}"
                             f"in [{lo:g}, {hi:g}]")
        steps.append(Transform(kind, value))
    if not steps:
        raise ValueError(f"empty transformation spec {spec!r}")
    return TransformChain(tuple(steps))

