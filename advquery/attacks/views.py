"""Views of a photo that a tracker may take, drawn afresh in every attack step (expectation over transformation).

A tracker flips, rotates, crops (any position and aspect, down to a selection of the landmark), filters and
re-compresses a photo, then describes it at its own working size with its own model and pooling. A protection
that pushes the descriptors of such views away from those of the same views of the original photo holds for
the whole family, not only for the one pixel grid it was computed on.
"""
import math
from dataclasses import dataclass, fields
from functools import partial

import torch

from ..transforms import (Transform, gaussian_blur, jpeg_surrogate, resample, rotate, rotated_shape, rotation_reach,
                          straight_through)

OPTIONAL_FIELDS = ("extra", "jpeg_gradient")  # of TrackerViews: in its repr only where set


@dataclass(frozen=True)
class View:
    """One drawn view: a differentiable function of a (N, 3, H, W) photo: flipped, rotated, cropped, filtered,
    scaled to the tracker's working size and re-compressed (``recompression``: JPEG or WebP at a quality; None:
    not re-compressed). The codec has no gradient: the backward pass takes that of a Gaussian blur of
    ``codec_blur`` pixels at the working size (a codec keeps the low frequencies), with ``jpeg_gradient`` that of
    :func:`~advquery.transforms.jpeg_surrogate` at the codec's quality, else the identity's.
    The rotation and the crop are sampled in one pass at the size the crop is first scaled down to (the working
    size's, or the smaller copy's; at the crop's own size along a side that is scaled up), and the filters applied
    there (brightness and saturation act on each pixel alone, contrast about the crop's mean grey), so the rotation
    and the filters cost the view's pixels, not the photo's.

    ``box``: (top, left, height, width) fractions of the (flipped, rotated) photo; ``size``: the long side the
    whole photo gets at the tracker's working size (the crop is scaled by the same factor, as a bounding-box
    query is) or, with ``crop_file``, the long side of the crop itself (a cropped file described whole);
    ``shrunk``: the long side, at the same reference, of a smaller copy the view passed through before it was
    scaled to the working size (a thumbnail or a shrunk query that the tracker enlarges again; None: none).
    """

    flip: bool
    angle: float
    box: tuple[float, float, float, float]
    crop_file: bool
    size: int
    colour: tuple[float, float, float]  # brightness, contrast, saturation factors
    recompression: Transform | None
    model: int  # which member of the attacked models describes this view
    shrunk: int | None = None
    codec_blur: float = 0.0
    jpeg_gradient: bool = False

    def _geometry(self, shape: tuple[int, int]):
        """On a photo of ``shape``: the crop's window (top, left, height, width) in the flipped and rotated photo,
        the size it is sampled at, the size it is first scaled to, and the working size's."""
        h, w = rotated_shape(shape, self.angle) if self.angle else shape
        top, left, fh, fw = self.box
        ch, cw = max(8, round(h * fh)), max(8, round(w * fw))
        window = (round((h - ch) * top), round((w - cw) * left), ch, cw)
        long_side = self.size if self.crop_file else self.size * max(ch, cw) / max(h, w)
        scale = long_side / max(ch, cw)
        out = (max(16, round(ch * scale)), max(16, round(cw * scale)))
        reference = max(ch, cw) if self.crop_file else max(h, w)  # what ``size`` and ``shrunk`` are the long side of
        first = out  # the first size the crop is resampled to: the working size's, or the smaller copy's
        if self.shrunk is not None and self.shrunk < min(self.size, reference):
            small = self.shrunk / reference
            first = (max(8, round(ch * small)), max(8, round(cw * small)))
        # the rotation is sampled on the crop alone, along a side the first scaling shrinks at that size
        below = (min(first[0], ch), min(first[1], cw))
        return window, below, first, out

    def reach(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)``: the rows and columns of a photo of ``shape`` (as given, before the
        flip) that the view reads."""
        window, below, _, _ = self._geometry(shape)
        if self.angle:
            top, bottom, left, right = rotation_reach(shape, self.angle, window, below)
        else:
            y0, x0, ch, cw = window
            top, bottom, left, right = y0, y0 + ch, x0, x0 + cw
        return (top, bottom, shape[1] - right, shape[1] - left) if self.flip else (top, bottom, left, right)

    def __call__(self, x: torch.Tensor, photo: tuple[int, int] | None = None) -> torch.Tensor:
        """The view of ``x``; with ``photo``, the (H, W) of a whole photo of which ``x`` holds only the rows and
        columns :meth:`reach` names (a view's gradient then has only their size: an attack's views of a large photo
        do not each fill a gradient of the photo's size)."""
        whole = photo or tuple(x.shape[-2:])
        top, bottom, left, right = self.reach(whole)
        if photo is None:
            x = x[..., top:bottom, left:right]
        elif tuple(x.shape[-2:]) != (bottom - top, right - left):
            raise ValueError(f"the view reads {bottom - top} x {right - left} pixels, got {tuple(x.shape[-2:])}")
        if self.flip:
            x = x.flip(-1)
        window, below, first, shape = self._geometry(whole)
        crop = rotate(x, self.angle, window, below, photo=whole) if self.angle else resample(x, below)
        for kind, factor in zip(("brightness", "contrast", "saturation"), self.colour):
            if factor != 1:
                crop = Transform(kind, factor)(crop)
        out = resample(resample(crop, first), shape)
        # Re-compressed at the size it is described at, as a platform re-encodes the photo it has downscaled:
        # at a smaller size the codec removes more of a perturbation than at the photo's own.
        if self.recompression is None:
            return out
        surrogate = partial(gaussian_blur, sigma=self.codec_blur) if self.codec_blur else \
            partial(jpeg_surrogate, quality=int(self.recompression.value)) if self.jpeg_gradient else None
        return straight_through(out, self.recompression, surrogate)


@dataclass(frozen=True)
class TrackerViews:
    """How views are drawn.

    Args:
        count: views per step, each one network pass (forward and backward) plus a forward pass for the
            same view of the original.
        sizes: range of the tracker's working size (long side of the whole photo, pixels).
        crop: range of the kept fraction of each side (drawn independently: any aspect), at any position.
        crop_file: probability that the crop is a cropped file described whole (else a selection described at
            the photo's scale).
        flip: probability of a horizontal flip.
        rotate: largest rotation, degrees (drawn uniformly in +-rotate).
        colour: largest relative change of brightness, contrast and saturation.
        jpeg: range of JPEG quality and the probability of a re-compression (None: never).
        webp_share: the share of the re-compressions that are WebP (at a quality drawn from the same range)
            instead of JPEG: a platform's other codec, which removes more of a perturbation than JPEG does.
        shrink: range of the long side (pixels) of a smaller copy the view passes through before it is scaled to
            the working size, as a tracker enlarges a thumbnail or a shrunk query (None: never), and the
            probability of that.
        whole: probability that a view keeps the whole photo instead of a crop (a query of the photo as shared;
            with crops of each side drawn independently in ``crop`` alone, nearly every view is a crop).
        codec_blur: sigma (pixels at the working size) of the Gaussian blur whose gradient stands in for a
            re-compression's (which has none) in the backward pass; 0: the identity's (straight through), which
            spends steps on high frequencies that the codec removes.
        jpeg_gradient: the re-compressions' gradient that of a differentiable JPEG at their quality (WebP's too:
            :func:`~advquery.transforms.jpeg_surrogate`), which follows the codec's quantisation instead of
            ignoring it (the identity's) or keeping low frequencies alone (``codec_blur``'s).
        extra: another family of views drawn in every step beside these (None: none), e.g. a shrunk query at
            small working sizes, which then costs passes of its own size instead of taking views from this family.
    """

    count: int = 2
    sizes: tuple[int, int] = (448, 1024)
    crop: tuple[float, float] = (0.3, 1.0)
    crop_file: float = 0.5
    flip: float = 0.5
    rotate: float = 3.0
    colour: float = 0.15
    jpeg: tuple[int, int] | None = (70, 95)
    jpeg_probability: float = 0.3
    shrink: tuple[int, int] | None = None
    shrink_probability: float = 0.3
    webp_share: float = 0.0
    whole: float = 0.0
    codec_blur: float = 0.0
    extra: "TrackerViews | None" = None
    jpeg_gradient: bool = False

    def __post_init__(self):
        if not (isinstance(self.count, int) and self.count >= 1):
            raise ValueError(f"count must be a positive integer, got {self.count!r}")
        if not 32 <= self.sizes[0] <= self.sizes[1]:
            raise ValueError(f"sizes must be a range 32 <= low <= high, got {self.sizes}")
        if not 0 < self.crop[0] <= self.crop[1] <= 1:
            raise ValueError(f"crop must be a range 0 < low <= high <= 1, got {self.crop}")
        for name in ("crop_file", "flip", "jpeg_probability", "shrink_probability", "webp_share", "whole"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.rotate <= 45 or not 0 <= self.colour < 1:
            raise ValueError(f"rotate must be in [0, 45] degrees and colour in [0, 1), got {self.rotate}, {self.colour}")
        if self.jpeg is not None and not 1 <= self.jpeg[0] <= self.jpeg[1] <= 100:
            raise ValueError(f"jpeg must be a quality range 1 <= low <= high <= 100, got {self.jpeg}")
        if not 0 <= self.codec_blur <= 8:
            raise ValueError(f"codec_blur must be a blur sigma in [0, 8] pixels, got {self.codec_blur}")
        if self.codec_blur and self.jpeg_gradient:
            raise ValueError("codec_blur and jpeg_gradient are two gradients for the codec: choose one")
        if self.shrink is not None and not 16 <= self.shrink[0] <= self.shrink[1]:
            raise ValueError(f"shrink must be a range 16 <= low <= high, got {self.shrink}")
        if self.extra is not None and not isinstance(self.extra, TrackerViews):
            raise ValueError(f"extra must be TrackerViews or None, got {self.extra!r}")

    def __repr__(self) -> str:
        # ``extra`` and ``jpeg_gradient`` show only where they are set: the definitions of the views without them,
        # which name the benchmarks' cached photos and results, stay those recorded before they existed.
        shown = (f.name for f in fields(self) if f.name not in OPTIONAL_FIELDS or getattr(self, f.name))
        return f"TrackerViews({', '.join(f'{name}={getattr(self, name)!r}' for name in shown)})"

    @property
    def per_step(self) -> int:
        """Views drawn in every step, those of ``extra`` included."""
        return self.count + (self.extra.per_step if self.extra is not None else 0)

    @property
    def pass_cost(self) -> float:
        """Views drawn in every step, each weighed by its pixels against a view of this family (a pass's compute
        grows with its pixels): a view of ``extra`` at half these working sizes counts a quarter."""
        if self.extra is None:
            return float(self.count)
        return self.count + self.extra._mean_square_size() / self._mean_square_size() * self.extra.pass_cost

    def _mean_square_size(self) -> float:
        """The mean of the squared working size drawn uniformly in ``sizes`` (what a pass's pixels grow with)."""
        lo, hi = self.sizes
        return (lo * lo + lo * hi + hi * hi) / 3

    def sample(self, generator: torch.Generator, models: int = 1) -> list[View]:
        """``count`` views, then those of ``extra``, their models drawn among ``models`` members. Within one call the
        family's own views are those it draws without ``extra`` (drawn first); the calls after it start further along
        the generator's stream."""
        views = []
        for _ in range(self.count):
            u = torch.rand(13, generator=generator, device=generator.device).tolist()
            lo, hi = self.crop
            colour = tuple(1 + self.colour * (2 * c - 1) for c in u[7:10])
            quality = None if self.jpeg is None or u[11] >= self.jpeg_probability else \
                round(self.jpeg[0] + (self.jpeg[1] - self.jpeg[0]) * u[11] / self.jpeg_probability)
            shrunk = self._shrunk(generator)
            box = (0.0, 0.0, 1.0, 1.0) if self._keeps_whole(generator) else \
                (u[2], u[3], lo + (hi - lo) * u[4], lo + (hi - lo) * u[5])
            views.append(View(
                flip=u[0] < self.flip, angle=self.rotate * (2 * u[1] - 1), box=box, crop_file=u[6] < self.crop_file,
                size=round(self.sizes[0] + (self.sizes[1] - self.sizes[0]) * u[10]), colour=colour,
                recompression=None if quality is None else Transform(self._codec(generator), quality),
                model=min(models - 1, math.floor(u[12] * models)), shrunk=shrunk, codec_blur=self.codec_blur,
                jpeg_gradient=self.jpeg_gradient))
        return views if self.extra is None else views + self.extra.sample(generator, models)

    def _codec(self, generator: torch.Generator) -> str:
        """The codec of a re-compression, drawn only with a ``webp_share`` (draws of before stay the same)."""
        if not self.webp_share:
            return "jpeg"
        u = torch.rand(1, generator=generator, device=generator.device).item()
        return "webp" if u < self.webp_share else "jpeg"

    def _keeps_whole(self, generator: torch.Generator) -> bool:
        """Whether a view keeps the whole photo; draws nothing without ``whole`` (draws of before stay the same)."""
        return bool(self.whole) and torch.rand(1, generator=generator, device=generator.device).item() < self.whole

    def _shrunk(self, generator: torch.Generator) -> int | None:
        """A drawn long side of the smaller copy, or None; draws nothing without ``shrink``, so views drawn
        without it stay those of the same seed before it existed."""
        if self.shrink is None:
            return None
        u = torch.rand(2, generator=generator, device=generator.device).tolist()
        lo, hi = self.shrink
        return round(lo + (hi - lo) * u[1]) if u[0] < self.shrink_probability else None
