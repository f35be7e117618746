"""Random edits for robust protection: what happens to a photo after it is shared.

A perturbation optimised for one exact image is fragile: a crop, a re-compression or a
downscale removes most of its effect. Drawing such edits afresh in every attack step and
pushing the edited copies' descriptors away as well (expectation over transformation, Athalye
et al. 2018) makes the protection hold for the whole family of edits.
"""
from dataclasses import dataclass

import torch

from ..extraction import Box
from ..transforms import Transform, straight_through


@dataclass(frozen=True)
class RandomEdits:
    """Edited copies of a photo drawn at random in every step.

    Each copy is, in this order: re-compressed as JPEG at a quality drawn from ``jpeg``
    (a real JPEG in the forward pass, straight-through in the backward pass), downscaled by a
    factor drawn from ``resize`` (the retrieval system later resizes it to its working size),
    and cropped to a box whose sides are fractions drawn from ``crop`` of the photo's sides, at
    a random position, described at the photo's scale as a bounding-box query is.

    Args:
        copies: edited copies per step, each costing about one forward and backward pass.
        crop: range of the kept side fraction (1 keeps the whole photo).
        resize: range of the downscale factor (1 keeps the size).
        jpeg: range of the JPEG quality, or None for no re-compression.
    """

    copies: int = 1
    crop: tuple[float, float] = (0.5, 1.0)
    resize: tuple[float, float] = (0.5, 1.0)
    jpeg: tuple[int, int] | None = (70, 95)

    def __post_init__(self):
        if not (isinstance(self.copies, int) and self.copies >= 1):
            raise ValueError(f"copies must be a positive integer, got {self.copies!r}")
        for name in ("crop", "resize"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be a range 0 < low <= high <= 1, got {(lo, hi)}")
        if self.jpeg is not None and not 1 <= self.jpeg[0] <= self.jpeg[1] <= 100:
            raise ValueError(f"jpeg must be a quality range 1 <= low <= high <= 100, got {self.jpeg}")

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> list[tuple[torch.Tensor, Box]]:
        """``copies`` edited versions of ``x`` (N, 3, H, W), each with the crop box to describe."""
        out = []
        for _ in range(self.copies):
            q, s, fh, fw, py, px = torch.rand(6, generator=generator, device=generator.device).tolist()
            y = x
            if self.jpeg is not None:
                quality = round(self.jpeg[0] + (self.jpeg[1] - self.jpeg[0]) * q)
                y = straight_through(y, Transform("jpeg", quality))
            factor = self.resize[0] + (self.resize[1] - self.resize[0]) * s
            if factor < 1:
                y = Transform("resize", factor)(y)
            h, w = y.shape[-2:]
            ch = max(1, round(h * (self.crop[0] + (self.crop[1] - self.crop[0]) * fh)))
            cw = max(1, round(w * (self.crop[0] + (self.crop[1] - self.crop[0]) * fw)))
            top, left = round((h - ch) * py), round((w - cw) * px)
            out.append((y, (left, top, left + cw, top + ch)))
        return out
