"""The optimisation loop shared by the perturbation attacks (PIRE and its perceptual variants).

An attack maximises the squared distance between the descriptor of the original photo and of
the perturbed one, ``||f(x) - f(x + v)||^2``, under a per-pixel bound on ``|v|``. Subclasses
only say what the bound is (:meth:`PerturbationAttack.bound`); this class owns the rest:
random start, Adam, projection onto the bound and onto [0, 1], 8-bit saving, early stopping
and keeping the best perturbation seen.

The perturbation lives at the working resolution the retrieval system sees (long side
``size``) and is upsampled to the photo's own resolution, so a 4000 x 3000 photo costs a
1024 px attack; the output keeps the original resolution.
"""
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..extraction import DEFAULT_SIZE, describe, resize_long_side
from ..models import DescriptorModel
from ..transforms import quantise, straight_through

SAVING_MODES = ("quantised", "refined", "x10")
CROP_SIDE = (0.5, 0.95)  # side of the random crops, as a fraction of the photo's width and height


@dataclass
class AttackStats:
    """Per image of the last call: steps run before stopping and final descriptor cosine similarity."""

    steps: list[int]
    similarity: list[float]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class PerturbationAttack:
    """Base class: maximise ``||f(x) - f(x + v)||^2`` with ``|v| <= bound(x)`` per pixel.

    Args:
        model: descriptor model (images in [0, 1] -> L2-normalised descriptors).
        steps: maximum number of Adam steps.
        lr: Adam learning rate, in [0, 1] pixel units.
        size: working size (long side) the retrieval system resizes photos to.
        scales: descriptor scales, as the retrieval system uses them.
        saving: how the result is made 8-bit. ``quantised`` (default): the optimisation sees the
            rounded 8-bit image (straight-through), so what is saved is what was optimised.
            ``refined``: the paper's p(v), continuous optimisation, then entries that rounding
            would erase are enlarged to one grey level. ``x10``: the paper's original ``x + 10 v``.
        codec: optional function applied (straight-through) after quantisation in every step, e.g.
            a real JPEG round trip, so the attack optimises the decoded file it will be saved as.
        random_start: start from ``U(-1, 1) * bound`` instead of zero.
        seed: seed of the random start (None: nondeterministic).
        target_similarity: stop an image once its descriptor cosine similarity to the original
            is at most this value (None: run all steps).
        patience: stop an image after this many steps without improvement (None: never).
        crops: number of random crops (sides drawn from :data:`CROP_SIDE`, seeded like the start)
            whose descriptors are pushed apart in every step too, so that a cropped copy of the
            photo (a bounding-box query, a platform's crop) stays protected; without them the effect
            sits near the image border and a 10 % crop removes it. Loss and early-stopping
            similarity are averaged over the whole photo and its crops; each crop costs about one
            more forward and backward pass per step.

    Shape:
        input (N, 3, H, W) float in [0, 1] on the 8-bit grid; output the same shape, on the 8-bit grid.
    """

    def __init__(self, model: DescriptorModel, steps: int = 100, lr: float = 1 / 255, size: int = DEFAULT_SIZE,
                 scales: Sequence[float] = (1.0,), saving: str = "quantised",
                 codec: Callable[[torch.Tensor], torch.Tensor] | None = None, random_start: bool = True,
                 seed: int | None = None, target_similarity: float | None = None, patience: int | None = None,
                 crops: int = 0):
        _check(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
        _check(lr > 0, f"lr must be positive, got {lr}")
        _check(isinstance(size, int) and size >= 32, f"size must be an integer >= 32, got {size!r}")
        _check(saving in SAVING_MODES, f"saving must be one of {SAVING_MODES}, got {saving!r}")
        _check(target_similarity is None or -1 <= target_similarity <= 1,
               f"target_similarity must be in [-1, 1], got {target_similarity}")
        _check(patience is None or (isinstance(patience, int) and patience >= 1),
               f"patience must be a positive integer, got {patience!r}")
        self.model, self.steps, self.lr, self.size, self.scales = model, steps, lr, size, tuple(scales)
        self.saving, self.codec, self.random_start, self.seed = saving, codec, random_start, seed
        _check(isinstance(crops, int) and crops >= 0, f"crops must be a non-negative integer, got {crops!r}")
        self.target_similarity, self.patience, self.crops = target_similarity, patience, crops
        self.stats = AttackStats([], [])
        self.perturbation: torch.Tensor | None = None  # best working-resolution perturbation of the last call
        self.original_descriptor: torch.Tensor | None = None  # (N, D) descriptors of the last call's input

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel bound on |v|, broadcastable to ``x`` (the photo at perturbation resolution)."""
        raise NotImplementedError

    def describe(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptor of full-resolution images as the retrieval system computes it."""
        return self.model(resize_long_side(x, self.size), scales=self.scales)

    def views(self, x: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
        """(N, 1 + len(boxes), D) descriptors the objective pushes apart: the whole photo and its crops."""
        return torch.stack([self.describe(x)] + [describe(self.model, x, self.size, self.scales, box=b)
                                                 for b in boxes], dim=1)

    def similarity_to_original(self, images: torch.Tensor) -> list[float]:
        """Descriptor cosine similarity of ``images`` (e.g. the decoded output files) to the last call's input."""
        with torch.no_grad():
            return (self.describe(images.to(self.model.device)) * self.original_descriptor).sum(dim=1).tolist()

    def _crop_boxes(self, shape: tuple[int, int], generator: torch.Generator) -> list[tuple[int, int, int, int]]:
        h, w = shape
        boxes = []
        for _ in range(self.crops):
            lo, hi = CROP_SIDE
            fh, fw, py, px = torch.rand(4, generator=generator, device=generator.device).tolist()
            ch, cw = round(h * (lo + (hi - lo) * fh)), round(w * (lo + (hi - lo) * fw))
            top, left = round((h - ch) * py), round((w - cw) * px)
            boxes.append((left, top, left + cw, top + ch))
        return boxes

    def _perturbation_size(self, x: torch.Tensor) -> tuple[int, int]:
        h, w = x.shape[-2:]
        scale = min(1.0, self.size / max(h, w))  # never finer than the photo itself
        return max(1, round(h * scale)), max(1, round(w * scale))

    @staticmethod
    def _upsample(v: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        if tuple(v.shape[-2:]) == tuple(shape):
            return v
        return F.interpolate(v, size=shape, mode="bilinear", align_corners=False)

    def _compose(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The image the optimisation sees: 8-bit (straight-through) in ``quantised`` mode, else continuous."""
        adv = (x + self._upsample(v, x.shape[-2:])).clamp(0, 1)
        if self.saving != "quantised":
            return adv
        adv = straight_through(adv, quantise)
        return adv if self.codec is None else straight_through(adv, self.codec)

    def render(self, x: torch.Tensor, v: torch.Tensor, saving: str | None = None) -> torch.Tensor:
        """The 8-bit image a saving mode makes of ``x`` and a working-resolution perturbation ``v``
        (e.g. :attr:`perturbation` after a call), so one optimisation can be saved in every mode."""
        saving = saving or self.saving
        _check(saving in SAVING_MODES, f"saving must be one of {SAVING_MODES}, got {saving!r}")
        delta = self._upsample(v, x.shape[-2:])
        if saving == "x10":
            delta = 10 * delta
        elif saving == "refined":
            # p(v): entries that rounding would erase become one grey level; the others survive as they are.
            small = (delta != 0) & (delta.abs() < 0.5 / 255)
            delta = torch.where(small, torch.sign(delta) / 255, delta)
        return quantise(x + delta)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Protected versions of ``images`` (N, 3, H, W) in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"expected (N, 3, H, W) float images in [0, 1], got {tuple(images.shape)} {images.dtype}")
        if images.min() < 0 or images.max() > 1:
            raise ValueError(f"expected images in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]")
        x = images.detach().to(self.model.device, torch.float32)
        n = x.shape[0]
        generator = torch.Generator(device=x.device)
        if self.seed is None:
            generator.seed()  # nondeterministic, without touching the global RNG
        else:
            generator.manual_seed(self.seed)
        boxes = self._crop_boxes(tuple(x.shape[-2:]), generator)
        with torch.no_grad():
            target = self.views(x, boxes)
            x_work = F.interpolate(x, size=self._perturbation_size(x), mode="bilinear", align_corners=False,
                                   antialias=True) if self._perturbation_size(x) != tuple(x.shape[-2:]) else x
            bound = self.bound(x_work).expand_as(x_work)
        v = (torch.rand(x_work.shape, generator=generator, device=x.device) * 2 - 1) * bound \
            if self.random_start else torch.zeros_like(x_work)
        v = (x_work + v).clamp(0, 1) - x_work
        v.requires_grad_(True)
        optimiser = torch.optim.Adam([v], lr=self.lr)
        best_loss = torch.full((n,), -math.inf, device=x.device)
        best_v = v.detach().clone()
        since_best = torch.zeros(n, dtype=torch.long, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        steps_used = torch.full((n,), self.steps, dtype=torch.long, device=x.device)
        for step in range(self.steps):
            loss = (self.views(self._compose(x, v), boxes) - target).pow(2).sum(dim=2).mean(dim=1)
            with torch.no_grad():  # bookkeeping for the image v currently represents
                improved = loss > best_loss
                best_loss = torch.where(improved, loss, best_loss)
                best_v[improved] = v.detach()[improved]
                since_best = torch.where(improved, 0, since_best + 1)
                finished = ~done & self._finished(best_loss, since_best)
                steps_used[finished] = step
                done |= finished
            if bool(done.all()):
                break
            optimiser.zero_grad(set_to_none=True)
            (-loss.sum()).backward()
            optimiser.step()
            with torch.no_grad():  # project onto the bound and onto valid pixels
                v.copy_(torch.maximum(torch.minimum(v, bound), -bound))
                v.copy_((x_work + v).clamp(0, 1) - x_work)
        self.perturbation = best_v
        self.original_descriptor = target[:, 0]
        with torch.no_grad():
            out = self.render(x, best_v)
            similarity = (self.describe(out) * target[:, 0]).sum(dim=1)
        self.stats = AttackStats(steps_used.tolist(), similarity.tolist())
        return out.to(images.device, images.dtype)

    def _finished(self, best_loss: torch.Tensor, since_best: torch.Tensor) -> torch.Tensor:
        finished = torch.zeros_like(since_best, dtype=torch.bool)
        if self.target_similarity is not None:
            # ||a - b||^2 = 2 - 2 cos for unit vectors: the mean loss gives the mean similarity over the views.
            finished |= 1 - best_loss / 2 <= self.target_similarity
        if self.patience is not None:
            finished |= since_best >= self.patience
        return finished
