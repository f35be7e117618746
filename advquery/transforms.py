"""Image transformations a shared photo meets, on (N, 3, H, W) tensors in [0, 1].

Platforms re-compress, resize and crop photos, people flip, rotate and filter them; robustness
experiments apply the same edits to query files (``advquery eval --transform``, the tracker suite of
:mod:`advquery.trackers`) and robust attacks optimise through them. A transformation is written as a
spec, steps separated by commas and applied in order::

    jpeg:75              JPEG re-compression at quality 75 (PIL; 4:2:0 below quality 90)
    webp:80              WebP re-compression at quality 80 (PIL)
    resize:0.5           resize both sides by a factor (50 % also written resize:50%; above 1 upscales)
    crop:0.8             central crop keeping 80 % of the width and of the height
    crop-tl:0.8          the same crop anchored at a corner: crop-tl, crop-tr, crop-bl, crop-br
    aspect:1             the largest central crop of aspect width / height = 1 (4:5 is aspect:0.8)
    flip                 horizontal mirror image
    rotate:3             rotation by 3 degrees (counter-clockwise; negative: clockwise), cropped to the
                         largest centred rectangle of the photo's aspect that holds no border
    blur:1.5             Gaussian blur, sigma in pixels
    unsharp:1            unsharp mask: x + 1 * (x - blur(x, sigma 1))
    brightness:1.2       pixel values times 1.2 (PIL ImageEnhance.Brightness)
    contrast:1.2         distances from the mean grey times 1.2 (PIL ImageEnhance.Contrast)
    saturation:1.3       distances from each pixel's grey times 1.3 (PIL ImageEnhance.Color)
    gamma:0.8            pixel values to the power 0.8
    jpeg:75,resize:0.5   JPEG first, then half size

Every step but ``jpeg`` and ``webp`` is differentiable; :func:`straight_through` makes any
transformation usable inside an attack: the forward pass sees the real transformed image, the
backward pass treats the transformation as the identity.
"""
import io as _io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .io import jpeg_subsampling, to_uint8

Box = tuple[float, float, float, float]


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid k / 255 (what saving as PNG keeps)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def jpeg_round_trip(x: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Encode each image as JPEG (PIL, 4:4:4 at quality >= 90 as advquery saves) and decode it again."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return _codec_round_trip(x, "JPEG", quality=quality, subsampling=jpeg_subsampling(quality))


def _codec_round_trip(x: torch.Tensor, codec: str, **options) -> torch.Tensor:
    """Each image of ``x`` saved as 8 bits in ``codec`` by PIL with ``options``, and decoded again."""
    out = torch.empty(x.shape, dtype=x.dtype)  # each decoded image converted into it, then divided in place
    for img, decoded_img in zip(x.detach(), out):
        buf = _io.BytesIO()
        Image.fromarray(to_uint8(img)).save(buf, codec, **options)
        buf.seek(0)
        with Image.open(buf) as decoded:
            rgb = np.asarray(decoded if decoded.mode == "RGB" else decoded.convert("RGB")).copy()  # writable
            decoded_img.copy_(torch.from_numpy(rgb).permute(2, 0, 1))
    return out.to(x.device).div_(255)


def straight_through(x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
                     surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``transform(x)`` in the forward pass; in the backward pass the gradient of ``surrogate``, a differentiable
    stand-in for ``transform`` (BPDA), or of the identity without one."""
    stand_in = x if surrogate is None else surrogate(x)
    return stand_in + (transform(x.detach()) - stand_in).detach()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (kernel radius 3 sigma, reflected borders), differentiable.

    On a CPU, images of several float32 channels are blurred channels-last: oneDNN's depthwise convolution is two to
    four times quicker in that layout, with the same sums; the result comes back contiguous."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[1] > 1 \
            and not x.is_contiguous(memory_format=torch.channels_last):
        return gaussian_blur(x.contiguous(memory_format=torch.channels_last), sigma).contiguous()
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


# The quantisation tables of the JPEG standard (ITU-T T.81, Annex K), luminance and chrominance, in row order; the
# libjpeg that PIL uses scales them by the quality (jpeg_set_quality, baseline: at most 255).
_JPEG_TABLES = (
    (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99),
    (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
     47, 66, 99, 99, 99, 99, 99, 99, *(99,) * 32),
)
# JFIF's RGB to YCbCr (the chroma's offset of 128 and the level shift of 128 cancel before the DCT)
_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def jpeg_quantisers(quality: int) -> torch.Tensor:
    """(2, 8, 8) the quantiser steps of libjpeg at ``quality`` (1-100), luminance then chrominance."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    tables = torch.tensor(_JPEG_TABLES, dtype=torch.float64)
    return ((tables * scale + 50) // 100).clamp(1, 255).reshape(2, 8, 8).float()


def _block_dct(device: torch.device) -> torch.Tensor:
    """(64, 64) JPEG's transform of an 8 x 8 block B, the orthonormal 2-D DCT-II F = D B D^T, on blocks and
    coefficients flattened in row order (the Kronecker product of D with itself); orthonormal: its inverse is its
    transpose."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    d = torch.cos((2 * torch.arange(8, dtype=torch.float64)[None] + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return torch.kron(d, d).float().to(device)


def jpeg_surrogate(x: torch.Tensor, quality: int, subsampling: bool | None = None) -> torch.Tensor:
    """A differentiable stand-in for a JPEG round trip at ``quality`` (BPDA's surrogate; its gradient is what
    counts): JPEG's linear steps (:func:`_jpeg_blocks`) with each DCT coefficient's slope that of the soft rounding of
    Shin and Song ("JPEG-resistant adversarial images", 2017) at its own position between the quantiser's levels. The
    slope, 12 u^2 at u = coefficient / step - round(coefficient / step), is 0 at a level and 3 halfway between two (4
    times the cubic's 3 u^2, so that its mean is the identity's 1): a change moves the decoded photo only where it
    carries a coefficient across a rounding threshold, and the coefficients the codec rounds to a level far from its
    thresholds (most high frequencies at a low quality) give next to no gradient, where the identity's (straight
    through) spends steps on them. Computed in float32 inside an autocast region too: a coefficient's place between
    two levels needs its precision."""
    def soft_rounding(coefficients: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            u = coefficients / step
            slope = (u - u.round()).square_().mul_(12)
        return coefficients * slope

    with torch.autocast(x.device.type, enabled=False):
        return _jpeg_blocks(x.float(), quality, subsampling, soft_rounding)


def _jpeg_blocks(x: torch.Tensor, quality: int, subsampling: bool | None,
                 quantise_coefficients: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """JPEG's linear steps around ``quantise_coefficients`` ((blocks, 64) DCT coefficients of the 8 x 8 blocks in
    row order, and their (64,) quantiser steps, to the coefficients decoded): RGB to YCbCr, the chroma averaged over
    2 x 2 pixels with ``subsampling`` (None: as advquery saves a JPEG, :func:`~advquery.io.jpeg_subsampling`), each
    plane's blocks to DCT coefficients and back, the chroma repeated to full size, and back to RGB."""
    n, _, h, w = x.shape
    subsample = jpeg_subsampling(quality) == 2 if subsampling is None else subsampling
    to_ycbcr = x.new_tensor(_YCBCR)
    planes = F.conv2d(x, (to_ycbcr * 255)[..., None, None])
    luma, chroma = planes[:, :1], planes[:, 1:]
    if subsample:  # 4:2:0: the chroma of each 2 x 2 block (a partial one at an odd border: its edge repeated)
        chroma = F.avg_pool2d(F.pad(chroma, (0, w % 2, 0, h % 2), mode="replicate"), 2)
    steps = jpeg_quantisers(quality).to(x.device).flatten(1)
    transform = _block_dct(x.device)
    rebuilt = []
    for plane, step in ((luma, steps[0]), (chroma, steps[1])):
        ph, pw = plane.shape[-2:]
        # blocks of 8 x 8, a partial block at the border filled with its edge (as libjpeg extends the image), each a
        # row of 64 pixels: one matrix product takes them all to their coefficients and one back
        padded = F.pad(plane, (0, -pw % 8, 0, -ph % 8), mode="replicate")
        c, bh, bw = padded.shape[1], padded.shape[2] // 8, padded.shape[3] // 8
        blocks = padded.reshape(n, c, bh, 8, bw, 8).transpose(3, 4).reshape(-1, 64)
        blocks = quantise_coefficients(blocks @ transform.T, step) @ transform
        rebuilt.append(blocks.reshape(n, c, bh, bw, 8, 8).transpose(3, 4).reshape(n, c, bh * 8, bw * 8)[..., :ph, :pw])
    luma, chroma = rebuilt
    if subsample:
        chroma = F.interpolate(chroma, scale_factor=2, mode="nearest")[..., :h, :w]
    to_rgb = torch.linalg.inv(to_ycbcr)[..., None, None] / 255
    return F.conv2d(luma, to_rgb[:, :1]) + F.conv2d(chroma, to_rgb[:, 1:])


def webp_round_trip(x: torch.Tensor, quality: int = 80) -> torch.Tensor:
    """Encode each image as WebP (PIL, lossy) and decode it again."""
    return _codec_round_trip(x, "WEBP", quality=int(quality))


# Rec.601 luma, as PIL's "L" conversion that ImageEnhance.Contrast and ImageEnhance.Color use.
_REC601 = (0.299, 0.587, 0.114)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return _REC601[0] * x[:, 0:1] + _REC601[1] * x[:, 1:2] + _REC601[2] * x[:, 2:3]


def _rotation_crop_scale(h: int, w: int, degrees: float) -> float:
    """Largest s such that the centred s*w x s*h rectangle fits inside the w x h photo rotated by ``degrees``."""
    c, s = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    return min(w / (w * c + h * s), h / (w * s + h * c))


def resample(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``x`` (..., H, W) bilinearly resampled to ``shape`` (H, W), antialiased where a side shrinks; ``x`` itself
    where it has that shape."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=tuple(shape), mode="bilinear", align_corners=False,
                         antialias=shape[0] < x.shape[-2] or shape[1] < x.shape[-1])


class _Rotation(NamedTuple):
    """The geometry of :func:`rotate` on a photo: the output's (height, width); the window's (top, left, height,
    width) in the rotated crop of ``rotated`` (height, width); ``source``, an output point's place in the photo;
    the scale factors along each side (at most 1); and ``reach``, the photo's rows and columns the sampling reads
    (top, bottom, left, right)."""

    out: tuple[int, int]
    window: tuple[float, float, float, float]
    rotated: tuple[int, int]
    source: Callable
    factors: tuple[float, float]
    reach: tuple[int, int, int, int]


def _rotation(shape: tuple[int, int], degrees: float, window: tuple[int, int, int, int] | None,
              out: tuple[int, int] | None) -> _Rotation:
    h, w = shape
    nh, nw = rotated_shape((h, w), degrees)
    top, left, wh, ww = window or (0, 0, nh, nw)
    oh, ow = out or (wh, ww)
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))

    def source(yy, xx):  # output point p' = R p (counter-clockwise, y down): p = R^-1 p', in the photo's pixels
        return sin * xx + cos * yy + h / 2, cos * xx - sin * yy + w / 2

    fy, fx = min(1.0, oh / wh), min(1.0, ow / ww)
    reach = (0, h, 0, w)
    if fy < 1 or fx < 1:  # the part of the photo the samples and their filters reach
        corners = [source(cy - nh / 2, cx - nw / 2) for cy in (top, top + wh) for cx in (left, left + ww)]
        ry, rx = math.ceil(2 / fy) + 1, math.ceil(2 / fx) + 1
        rows, cols = [c[0] for c in corners], [c[1] for c in corners]
        reach = (max(0, math.floor(min(rows)) - ry), min(h, math.ceil(max(rows)) + ry),
                 max(0, math.floor(min(cols)) - rx), min(w, math.ceil(max(cols)) + rx))
    return _Rotation((oh, ow), (top, left, wh, ww), (nh, nw), source, (fy, fx), reach)


def rotation_reach(shape: tuple[int, int], degrees: float, window: tuple[int, int, int, int] | None = None,
                   out: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: the rows and columns of a photo of ``shape`` that :func:`rotate` with these
    arguments reads (the whole photo where no side is downscaled)."""
    return _rotation(shape, degrees, window, out).reach


def rotate(x: torch.Tensor, degrees: float, window: tuple[int, int, int, int] | None = None,
           shape: tuple[int, int] | None = None, photo: tuple[int, int] | None = None) -> torch.Tensor:
    """Bilinear rotation about the centre, sampled only on the border-free centred crop (its shape:
    :func:`rotated_shape`); with ``window`` (top, left, height, width in that crop), only that part of it, which
    costs that part's share; with ``shape``, that part resampled to ``shape`` (H, W) in the same pass. Along a side
    where ``shape`` is smaller than the window, the part of the photo under it (and the filter's reach around it)
    is first downscaled by as much (antialiased), so the rotation costs the smaller size's pixels and does not
    alias. With ``photo``, the (H, W) of the whole photo, ``x`` holds only the rows and columns of it that
    :func:`rotation_reach` names."""
    geometry = _rotation(photo or tuple(x.shape[-2:]), degrees, window, shape)
    (oh, ow), (top, left, wh, ww), (nh, nw) = geometry.out, geometry.window, geometry.rotated
    y0, y1, x0, x1 = geometry.reach
    if photo is None:
        x = x[..., y0:y1, x0:x1]
    elif tuple(x.shape[-2:]) != (y1 - y0, x1 - x0):
        raise ValueError(f"a part of {y1 - y0} x {x1 - x0} pixels was expected, got {tuple(x.shape[-2:])}")
    # output pixel centres, from the centre of the rotated crop
    ys = top + (torch.arange(oh, device=x.device, dtype=x.dtype) + 0.5) * (wh / oh) - nh / 2
    xs = left + (torch.arange(ow, device=x.device, dtype=x.dtype) + 0.5) * (ww / ow) - nw / 2
    src_y, src_x = geometry.source(*torch.meshgrid(ys, xs, indexing="ij"))
    fy, fx = geometry.factors
    if fy < 1 or fx < 1:  # downscale the part of the photo the samples and their filters reach, then sample that
        x = resample(x, (max(1, round((y1 - y0) * fy)), max(1, round((x1 - x0) * fx))))
    grid = torch.stack([(src_x - x0) * 2 / (x1 - x0) - 1, (src_y - y0) * 2 / (y1 - y0) - 1], dim=-1)
    return _sample(x, grid)


SAMPLING_BANDS = 4  # the most bands of output rows a photo's rotation is sampled in (one per thread; _sample)


def _sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear ``F.grid_sample`` (border padding) of every image of ``x`` (N, C, H, W) at one ``grid`` (h, w, 2).

    The CPU kernel shares its work among threads by image only, so a single image on a CPU is sampled as bands of
    output rows, one band per thread, stacked as a batch of the same image: the same values, in the threads' time
    rather than one thread's (the backward pass sums the bands' gradients). At most :data:`SAMPLING_BANDS` bands: each
    band's backward fills a gradient buffer the size of the input (a guard for many-core CPUs, measured on 2 threads
    only)."""
    n, c = x.shape[:2]
    h, w = grid.shape[:2]
    options = dict(mode="bilinear", padding_mode="border", align_corners=False)
    bands = min(torch.get_num_threads(), SAMPLING_BANDS, h) if x.device.type == "cpu" and n == 1 else 1
    if bands == 1:
        return F.grid_sample(x, grid[None].expand(n, -1, -1, -1), **options)
    rows = -(-h // bands)
    if rows * bands > h:  # the last band filled up with copies of the last row, dropped after
        grid = torch.cat([grid, grid[-1:].expand(rows * bands - h, -1, -1)])
    out = F.grid_sample(x.expand(bands, -1, -1, -1), grid.view(bands, rows, w, 2), **options)
    return out.permute(1, 0, 2, 3).reshape(1, c, bands * rows, w)[:, :, :h]


def rotated_shape(shape: tuple[int, int], degrees: float) -> tuple[int, int]:
    """(H, W) of a photo of ``shape`` rotated by ``degrees`` and cropped to remove the borders."""
    h, w = shape
    scale = _rotation_crop_scale(h, w, degrees)
    return max(1, math.floor(h * scale)), max(1, math.floor(w * scale))


def _crop_window(kind: str, value: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop step on an image of ``shape``."""
    h, w = shape
    if kind == "aspect":
        nh, nw = (h, max(1, round(h * value))) if w / h > value else (max(1, round(w / value)), w)
    else:
        nh, nw = max(1, round(h * value)), max(1, round(w * value))
    anchor = kind.partition("-")[2]  # "", or tl / tr / bl / br
    top = 0 if anchor.startswith("t") else h - nh if anchor.startswith("b") else (h - nh) // 2
    left = 0 if anchor.endswith("l") else w - nw if anchor.endswith("r") else (w - nw) // 2
    return top, left, nh, nw


def _clip_box(box: Box, top: float, left: float, h: int, w: int) -> Box | None:
    """``box`` in the coordinates of the window at (top, left), clipped to its h x w (None: outside)."""
    x1, y1, x2, y2 = box
    x1, y1 = max(0, x1 - left), max(0, y1 - top)
    x2, y2 = min(w, x2 - left), min(h, y2 - top)
    return (x1, y1, x2, y2) if x2 - x1 >= 1 and y2 - y1 >= 1 else None


CROPS = ("crop", "crop-tl", "crop-tr", "crop-bl", "crop-br", "aspect")
# kind: (value range, integer value?, takes a value?)
KINDS = {"jpeg": ((1, 100), True, True), "webp": ((1, 100), True, True), "resize": ((0.01, 10), False, True),
         **{k: ((0.01, 1), False, True) for k in CROPS[:-1]}, "aspect": ((0.1, 10), False, True),
         "flip": ((1, 1), True, False), "rotate": ((-45, 45), False, True), "blur": ((0.01, 50), False, True),
         "unsharp": ((0.01, 5), False, True), "brightness": ((0.01, 10), False, True),
         "contrast": ((0.01, 10), False, True), "saturation": ((0, 10), False, True),
         "gamma": ((0.1, 10), False, True)}


@dataclass(frozen=True)
class Transform:
    """One step of a transformation spec: ``kind`` (see the module docstring) and its value (1 for ``flip``)."""

    kind: str
    value: float = 1.0

    def __str__(self) -> str:
        return self.kind if not KINDS[self.kind][2] else f"{self.kind}:{self.value:g}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        k, v = self.kind, self.value
        if k == "jpeg":
            return jpeg_round_trip(x, int(v))
        if k == "webp":
            return webp_round_trip(x, int(v))
        if k == "blur":
            return gaussian_blur(x, v)
        if k == "flip":
            return x.flip(-1)
        if k == "rotate":
            return rotate(x, v)
        if k == "unsharp":
            return (x + v * (x - gaussian_blur(x, 1.0))).clamp(0, 1)
        if k == "brightness":
            return (x * v).clamp(0, 1)
        if k == "contrast":
            mean = _luma(x).mean(dim=(-3, -2, -1), keepdim=True)
            return (mean + v * (x - mean)).clamp(0, 1)
        if k == "saturation":
            grey = _luma(x)
            return (grey + v * (x - grey)).clamp(0, 1)
        if k == "gamma":
            return x.clamp_min(1e-6).pow(v)
        if k == "resize":
            h, w = self.shape(tuple(x.shape[-2:]))
            return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=v < 1)
        top, left, h, w = _crop_window(k, v, tuple(x.shape[-2:]))
        return x[..., top:top + h, left:left + w]

    def shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Image (H, W) after this step."""
        if self.kind == "resize":
            return tuple(max(1, round(s * self.value)) for s in shape)
        if self.kind in CROPS:
            return _crop_window(self.kind, self.value, shape)[2:]
        if self.kind == "rotate":
            return rotated_shape(shape, self.value)
        return shape

    def map_box(self, box: Box, shape: tuple[int, int]) -> Box | None:
        """Where a bounding box of an image of ``shape`` lies after this step (None: cropped away)."""
        h, w = shape
        nh, nw = self.shape(shape)
        x1, y1, x2, y2 = box
        if self.kind == "resize":
            return x1 * nw / w, y1 * nh / h, x2 * nw / w, y2 * nh / h
        if self.kind == "flip":
            return w - x2, y1, w - x1, y2
        if self.kind in CROPS:
            top, left, ch, cw = _crop_window(self.kind, self.value, shape)
            return _clip_box(box, top, left, ch, cw)
        if self.kind == "rotate":  # the rotated corners' bounding rectangle, in the border-free crop
            t = math.radians(self.value)
            xs, ys = [], []
            for px, py in ((x1, y1), (x2, y1), (x1, y2), (x2, y2)):
                dx, dy = px - w / 2, py - h / 2
                xs.append(math.cos(t) * dx + math.sin(t) * dy + nw / 2)
                ys.append(-math.sin(t) * dx + math.cos(t) * dy + nh / 2)
            return _clip_box((min(xs), min(ys), max(xs), max(ys)), 0, 0, nh, nw)
        return box


@dataclass(frozen=True)
class TransformChain:
    """Transformations applied in order, as a platform would (see the module docstring for specs)."""

    steps: tuple[Transform, ...]

    def __str__(self) -> str:
        return ",".join(map(str, self.steps)) or "none"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The transformed images; every intermediate result is saved as 8-bit, as files are."""
        for step in self.steps:
            x = quantise(step(x))
        return x

    def apply(self, rgb: np.ndarray, box: Box | None = None) -> tuple[np.ndarray, Box | None]:
        """A decoded (H, W, 3) uint8 photo and its bounding box after all steps (a box cropped away
        entirely becomes None: the whole transformed photo)."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
        return to_uint8(self(x)), self.map_box(box, rgb.shape[:2])

    def map_box(self, box: Box | None, shape: tuple[int, int]) -> Box | None:
        """The bounding box after all steps (None when there was none or it was cropped away)."""
        for step in self.steps:
            if box is None:
                return None
            box = step.map_box(box, shape)
            shape = step.shape(shape)
        return box


def parse_transform(spec: str) -> TransformChain:
    """Parse a spec such as ``jpeg:75,resize:0.5`` or ``flip,crop:0.9`` (ValueError naming the bad part)."""
    steps = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, colon, text = part.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise ValueError(f"unknown transformation {kind!r} in {spec!r}; use {', '.join(KINDS)}")
        (lo, hi), integer, takes_value = KINDS[kind]
        if not takes_value:
            if colon:
                raise ValueError(f"{part!r} in {spec!r}: {kind} takes no value")
            steps.append(Transform(kind))
            continue
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"{part!r} in {spec!r}: expected {kind}:NUMBER") from None
        if not lo <= value <= hi or (integer and value != int(value)):
            raise ValueError(f"{part!r} in {spec!r}: {kind} must be {'an integer ' if integer else ''}"
                             f"in [{lo:g}, {hi:g}]")
        steps.append(Transform(kind, value))
    if not steps:
        raise ValueError(f"empty transformation spec {spec!r}")
    return TransformChain(tuple(steps))
