"""The optimisation loop shared by the perturbation attacks (PIRE and its perceptual variants).

An attack maximises the squared distance between the descriptor of the original photo and of
the perturbed one, ``||f(x) - f(x + v)||^2``, under a per-pixel bound on ``|v|``, optionally minus a
price on the SSIM the change costs (``ssim_weight``, :class:`~advquery.attacks.pire.SSIMPIRE`). Subclasses
only say what the bound is (:meth:`PerturbationAttack.bound`); this class owns the rest:
random start, Adam, projection onto the bound and onto [0, 1], 8-bit saving, early stopping
and keeping the best perturbation seen.

The perturbation lives at the working resolution the retrieval system sees (long side ``size``, never
finer than the photo) and is upsampled to the photo's own resolution, so a 4000 x 3000 photo costs a
1024 px attack; the output keeps the original resolution. The steps compose the perturbed photo at its
own resolution, as it is saved: the upsampling, the 8-bit rounding and a codec at the photo's size, then
the retrieval system's downscale, act on the perturbation together (composing on the working grid
instead left several times more of the effect, ``bench/results/working_grid.md``). The network passes
run in reduced precision where the hardware computes it natively (``precision``,
:mod:`advquery.models.precision`).

:class:`ImageAttack` is the base of the model-free attacks (keypoint removal and injection,
Gaussian noise), which modify each photo as an 8-bit array.
"""
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from ..extraction import DEFAULT_SIZE, MIN_SIZE, cosine_similarity, describe, resize_long_side
from ..io import to_tensor, to_uint8
from ..models import DescriptorModel, ModelEnsemble
from ..models.descriptor import POOLINGS
from ..models.memory import reused_memory
from ..models.pooling import l2n
from ..models.precision import autocast, autocast_dtype, check_precision, float32_context, precision_name
from ..perceptual import SSIMPrice, flat_gain, monochrome, share_channels
from ..transforms import gaussian_blur, quantise, resample
from .robust import RandomEdits
from .views import TrackerViews

SAVING_MODES = ("quantised", "refined", "x10")
LR_SCHEDULES = ("constant", "cosine")
VIEW_REFERENCES = ("view", "photo")
WHOLE_VIEWS = (True, False, "cycle")

REUSED_MEMORY_SIDES = 2  # photos up to this many times the working size (long sides) reuse freed memory (forward)
FEATURE_MAP = "map"  # a "pooling" of the attack alone: the whole feature map (PerturbationAttack's poolings)


def whole_map(fmap: torch.Tensor) -> torch.Tensor:
    """The :data:`FEATURE_MAP` "pooling": (N, C*H*W) feature maps flattened and L2-normalised, in float32 as
    :meth:`~advquery.models.DescriptorModel.pool_map`'s descriptors are."""
    with float32_context(fmap.device):
        return l2n(fmap.float().flatten(1))


@dataclass
class AttackStats:
    """Per image of the last call: steps run before stopping and final descriptor cosine similarity."""

    steps: list[int]
    similarity: list[float]


@dataclass
class Composition:
    """A step's photo: ``change``, the perturbation resampled to the photo's size (the one part with a graph);
    ``pixels``, the changed photo on [0, 1] (what the SSIM price measures); ``seen``, those pixels after the codec,
    if any (what the views see); ``outside``, where the unclamped pixels left [0, 1]; ``gain``, the change's factor
    (None: 1). From :meth:`PerturbationAttack._compose`."""

    change: torch.Tensor
    pixels: torch.Tensor
    seen: torch.Tensor
    outside: torch.Tensor
    gain: torch.Tensor | None

    def backward(self, gradient: torch.Tensor) -> None:
        """Back-propagate ``gradient`` with respect to ``pixels`` (and to ``seen``, straight through the codec, the
        same) to the perturbation: the clamp's gradient, then the gain's; in place on ``gradient``."""
        gradient.masked_fill_(self.outside, 0)
        if self.gain is not None:
            gradient.mul_(self.gain)
        self.change.backward(gradient)


def _spent(share: torch.Tensor, differentiate: bool) -> torch.Tensor:
    """``share`` of an objective; with ``differentiate``, its gradient accumulated at once in the leaves it was
    computed from, and ``share`` without its graph (freed)."""
    if not differentiate:
        return share
    with float32_context(share.device):  # the backward pass outside the network passes' autocast
        share.sum().backward()
    return share.detach()


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_images(images: torch.Tensor) -> None:
    """Raise ValueError unless ``images`` is an (N, 3, H, W) float tensor in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"expected (N, 3, H, W) float images in [0, 1], got {tuple(images.shape)} {images.dtype}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"expected images in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]")


class ImageAttack:
    """Base of the model-free attacks: each photo is modified as an (H, W, 3) uint8 array.

    Subclasses implement :meth:`attack_one` and set ``stats_type``, a dataclass of per-image lists
    that becomes ``stats`` after every call.

    Shape:
        input (N, 3, H, W) float in [0, 1] (rounded to 8 bit first); output the same shape, on the 8-bit grid.
    """

    stats_type: type

    def __init__(self):
        self.stats = self.stats_type(*([] for _ in fields(self.stats_type)))

    def attack_one(self, rgb: np.ndarray) -> tuple[np.ndarray, dict]:
        """The modified photo and its stats, one value per field of ``stats_type``."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        results = [self.attack_one(to_uint8(x)) for x in images]
        self.stats = self.stats_type(**{f.name: [r[f.name] for _, r in results] for f in fields(self.stats_type)})
        return torch.cat([to_tensor(out) for out, _ in results]).to(images.device, images.dtype)


class PerturbationAttack:
    """Base class: maximise ``||f(x) - f(x + v)||^2`` with ``|v| <= bound(x)`` per pixel.

    Args:
        model: descriptor model (images in [0, 1] -> L2-normalised descriptors).
        steps: maximum number of Adam steps.
        lr: Adam learning rate, in [0, 1] pixel units.
        lr_schedule: ``constant`` (default) or ``cosine``: the rate falls from ``lr`` to 0 along half a cosine over
            ``steps``, so the last steps refine rather than jump, which matters when every step draws new views.
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
        edits: random edits (:class:`~advquery.attacks.robust.RandomEdits`) drawn afresh in every
            step; the descriptors of the edited copies are pushed away from the original's too
            (expectation over transformation), so that the protection survives cropping,
            re-compression and downscaling. Without them the effect sits near the image border and
            a 10 % crop removes it. Loss and early-stopping similarity are averaged over the whole
            photo and its edited copies; each copy costs about one more forward and backward pass.
        coarseness: the perturbation lives on a grid this many times coarser than the working resolution
            (1: one value per working pixel) and is upsampled bilinearly. A coarser, smoother pattern
            survives JPEG saving, which quantises fine detail away at full resolution.
        coarse_layer: add a second component to the perturbation, on a grid this many times coarser again
            (None: none), upsampled bilinearly; the bound, the valid pixel range and the price hold for the sum.
            Adam moves each coarse value by about one step a time, so the component moves whole blocks: the
            low-frequency pattern a tracker's strong downscale (a thumbnail query) keeps.
        ssim_weight: weight of an image-quality term in the objective, which becomes
            ``||f(x) - f(x + v)||^2 - ssim_weight * (1 - SSIM(x + v, x))``, with ``1 - SSIM`` of the perturbed
            photo (full resolution, 8 bit, before the codec, whose own loss it cannot change) in its
            quadratic approximation (:func:`~advquery.perceptual.ssim_cost_weights`), which costs nothing
            per step. 0 (default): the bound alone limits the change. Above 0 the attack spends the bound only where a pixel's
            change buys more descriptor distance than it costs SSIM; early stopping
            (``target_similarity``) looks at the descriptor distance alone.
        snapshot_every: keep, every this many steps k, the perturbation a run with ``steps=k`` would
            return (the best so far) in :attr:`snapshots` as ``(k, v)``; :meth:`render` makes each an
            image. One optimisation then gives the result after 10, 20, ... steps (None: keep none).
        precision: ``auto`` (default: bfloat16 network passes on a CPU that computes bfloat16 natively where a
            pass is measured to be faster, bfloat16 or float16 on CUDA, else float32; :mod:`advquery.models.precision`),
            ``float32``, ``bfloat16`` or ``float16`` (CUDA).
            The perturbation, its projection, the objective and the reported similarity stay float32.
        on_step: called after every optimiser step with ``(steps done, steps)``, e.g. for a progress bar;
            early stopping may end the run before ``steps``. An exception it raises ends the call.
        tracker_views: :class:`~advquery.attacks.views.TrackerViews` drawn in every step instead of ``edits``: each
            view's descriptors (one per pooling of ``poolings``) are pushed away from ``view_reference``.
        poolings: the poolings pushed away in each tracker view (one feature map, pooled each way); besides the
            trackers' poolings, ``map``: the whole feature map, flattened and L2-normalised (TMA's tensor loss: every
            location pushed, not one pooling's summary; with ``view_reference="view"`` only, whose reference has its
            shape).
        whole_view: with tracker views, also push the whole photo at the working size away from the original's
            descriptor in every step (one more forward and backward pass a step): ``True``, under ``model`` (the
            first of an ensemble's members); ``"cycle"``, under the ensemble's members in turn, one a step, so that
            every attacked model meets the photo as shared as often; ``False``, not at all.
        view_reference: what a view of the perturbed photo is pushed away from: ``view`` (default), the same view
            of the original, one more forward pass a view; ``photo``, the original photo's descriptor at the working
            size under the view's model and pooling, computed once (no pass a view; for research: it left more
            retrieval on the validation split, docs/methods.md).
        spare_flat: leave pixels whose local luminance deviation is below this many grey levels unchanged (None:
            none are spared).
        grey_change: change the three channels of every photo by the same amount, its brightness alone (for
            research: a change of colour is what the chroma subsampling of JPEG below quality 90 and of WebP throws
            away first); False: only black-and-white photos' (:func:`~advquery.perceptual.monochrome`).
        gradient_blur: sigma, in cells of the perturbation's grid, of a Gaussian blur of the gradient before every step
            (the translation-invariant attack, Dong et al., CVPR 2019): each step moves smooth blobs rather than single
            cells, a pattern that a shift, a rescale or a re-compression changes less (for research); 0: none.
        view_sets: with tracker views and ``view_reference="view"``, draw the views of the first ``view_sets`` steps
            only and let every later step ``t`` take those of step ``t mod view_sets`` again, whose references (the
            same views of the original) were computed then: one forward pass a view saved in every later step, at
            the cost of fewer distinct views (for research); None: fresh views every step.

    Shape:
        input (N, 3, H, W) float in [0, 1] on the 8-bit grid; output the same shape, on the 8-bit grid.
    """

    def __init__(self, model: DescriptorModel, steps: int = 100, lr: float = 1 / 255, size: int = DEFAULT_SIZE,
                 scales: Sequence[float] = (1.0,), saving: str = "quantised",
                 codec: Callable[[torch.Tensor], torch.Tensor] | None = None, random_start: bool = True,
                 seed: int | None = None, target_similarity: float | None = None, patience: int | None = None,
                 edits: RandomEdits | None = None, coarseness: int = 1, ssim_weight: float = 0.0,
                 snapshot_every: int | None = None, precision: str = "auto",
                 on_step: Callable[[int, int], None] | None = None, tracker_views: TrackerViews | None = None,
                 poolings: Sequence[str] = ("gem",), whole_view: bool | str = True, spare_flat: float | None = None,
                 lr_schedule: str = "constant", coarse_layer: int | None = None, view_reference: str = "view",
                 grey_change: bool = False, gradient_blur: float = 0.0, view_sets: int | None = None):
        _check(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
        _check(lr > 0, f"lr must be positive, got {lr}")
        _check(lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        _check(isinstance(size, int) and size >= MIN_SIZE, f"size must be an integer >= {MIN_SIZE}, got {size!r}")
        _check(saving in SAVING_MODES, f"saving must be one of {SAVING_MODES}, got {saving!r}")
        _check(target_similarity is None or -1 <= target_similarity <= 1,
               f"target_similarity must be in [-1, 1], got {target_similarity}")
        _check(patience is None or (isinstance(patience, int) and patience >= 1),
               f"patience must be a positive integer, got {patience!r}")
        self.model, self.steps, self.lr, self.size, self.scales = model, steps, lr, size, tuple(scales)
        self.lr_schedule = lr_schedule
        self.saving, self.codec, self.random_start, self.seed = saving, codec, random_start, seed
        _check(edits is None or isinstance(edits, RandomEdits), f"edits must be RandomEdits or None, got {edits!r}")
        self.target_similarity, self.patience, self.edits = target_similarity, patience, edits
        _check(snapshot_every is None or (isinstance(snapshot_every, int) and snapshot_every >= 1),
               f"snapshot_every must be a positive integer or None, got {snapshot_every!r}")
        _check(isinstance(coarseness, int) and not isinstance(coarseness, bool) and coarseness >= 1,
               f"coarseness must be a positive integer, got {coarseness!r}")
        _check(ssim_weight >= 0, f"ssim_weight must be >= 0, got {ssim_weight}")
        _check(coarse_layer is None or (isinstance(coarse_layer, int) and not isinstance(coarse_layer, bool)
                                        and coarse_layer >= 2),
               f"coarse_layer must be an integer >= 2 or None, got {coarse_layer!r}")
        self.snapshot_every, self.coarseness, self.ssim_weight = snapshot_every, coarseness, ssim_weight
        self.coarse_layer = coarse_layer
        check_precision(precision)
        self.precision = precision
        self.on_step = on_step
        _check(tracker_views is None or edits is None, "give edits or tracker_views, not both")
        _check(set(poolings) <= {*POOLINGS, FEATURE_MAP} and len(poolings) > 0,
               f"poolings must be among {(*POOLINGS, FEATURE_MAP)}")
        _check(whole_view in WHOLE_VIEWS, f"whole_view must be one of {WHOLE_VIEWS}, got {whole_view!r}")
        self.tracker_views, self.poolings, self.whole_view = tracker_views, tuple(poolings), whole_view
        _check(view_reference in VIEW_REFERENCES, f"view_reference must be one of {VIEW_REFERENCES}, got {view_reference!r}")
        self.view_reference = view_reference
        _check(FEATURE_MAP not in poolings or view_reference == "view",
               f"pooling {FEATURE_MAP!r} needs view_reference='view' (the original's map of the same view)")
        _check(spare_flat is None or spare_flat > 0, f"spare_flat must be positive grey levels or None, got {spare_flat}")
        self.spare_flat = spare_flat
        _check(isinstance(grey_change, bool), f"grey_change must be a bool, got {grey_change!r}")
        self.grey_change = grey_change
        _check(isinstance(gradient_blur, (int, float)) and not isinstance(gradient_blur, bool)
               and 0 <= gradient_blur <= 8,
               f"gradient_blur must be a blur sigma in [0, 8] grid cells, got {gradient_blur!r}")
        self.gradient_blur = gradient_blur
        _check(view_sets is None or (isinstance(view_sets, int) and not isinstance(view_sets, bool) and view_sets >= 1),
               f"view_sets must be a positive integer or None, got {view_sets!r}")
        _check(view_sets is None or view_reference == "view",
               "view_sets reuses the views' own references: it needs view_reference='view'")
        self.view_sets = view_sets
        self.snapshots: list[tuple[int, torch.Tensor]] = []  # (steps, working-resolution v) of the last call
        self.stats = AttackStats([], [])
        self.perturbation: torch.Tensor | None = None  # best working-resolution perturbation of the last call
        self.original_descriptor: torch.Tensor | None = None  # (N, D) descriptors of the last call's input

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel bound on |v|, broadcastable to ``x`` (the photo at perturbation resolution)."""
        raise NotImplementedError

    def _perturbation_bound(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` on the perturbation's grid (the working resolution, ``coarseness`` times coarser) and the bound
        there, expanded to its shape."""
        shape = self._perturbation_size(x)
        x_pert = x if shape == tuple(x.shape[-2:]) else \
            F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)  # rounding
        return x_pert, self.bound(x_pert).expand_as(x_pert)

    def budget(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, h, w) bound on |v| at the working resolution (largest over the channels), without
        running the attack: where and how much the attack may change ``x`` (N, 3, H, W) in [0, 1]."""
        with torch.no_grad():
            return self._perturbation_bound(x)[1].amax(dim=1, keepdim=True)

    def describe(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptor of full-resolution images as the retrieval system computes it."""
        return describe(self.model, x, self.size, self.scales)

    def views(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 1 + edited copies, D) descriptors the objective pushes away: the photo and its random edits."""
        work = resize_long_side(x, self.size)  # what the retrieval system sees of the photo
        # Edits are drawn on the working-resolution image: at full resolution the JPEG round trip
        # and the antialiased resizes (and their backward passes) cost more than the network.
        copies = self.edits.sample(work, generator) if self.edits else []
        return torch.stack([self.model(work, scales=self.scales)]
                           + [describe(self.model, c, self.size, self.scales, box=b) for c, b in copies], dim=1)

    def _members(self) -> list[DescriptorModel]:
        return list(self.model.members) if isinstance(self.model, ModelEnsemble) else [self.model]

    def _pooled(self, model: DescriptorModel, x: torch.Tensor) -> list[torch.Tensor]:
        fmap = model.feature_map(x)
        return [whole_map(fmap) if p == FEATURE_MAP else model.pool_map(fmap, p) for p in self.poolings]

    def photo_references(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per member model, per pooling: (N, D) descriptors of the original photo ``x`` at the working size, the
        references of ``view_reference="photo"`` (no gradient)."""
        work = resize_long_side(x, self.size)
        with torch.no_grad():
            return [self._pooled(model, work) for model in self._members()]

    def whole_targets(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """Per member model: (N, D) descriptor of the original photo ``x`` at the working size where ``whole_view``
        pushes that member's whole view away from it, else None (no gradient)."""
        members = self._members()
        used = range(len(members)) if self.whole_view == "cycle" else range(1) if self.whole_view else ()
        with torch.no_grad():
            return [describe(m, x, self.size, self.scales) if i in used else None for i, m in enumerate(members)]

    def view_distance(self, adv: torch.Tensor, x: torch.Tensor, generator: torch.Generator,
                      whole_targets: list[torch.Tensor | None],
                      photo_references: list[list[torch.Tensor]] | None = None, step: int = 0,
                      differentiate: bool = False, drawn: list | None = None) -> torch.Tensor:
        """(N,) mean squared descriptor distance, over the drawn tracker views and the poolings, between each view
        of ``adv`` and its reference: the same view of the original ``x``, or with ``photo_references``
        (:meth:`photo_references`) the original photo's descriptor under the view's model; with ``whole_view``, also
        the whole photo at the working size under the step's whole-view model against that model's descriptor of
        the original (``whole_targets``, :meth:`whole_targets`).

        With ``differentiate`` (``adv`` a tensor that requires grad), each view's share is differentiated as soon as
        its pass is made, so one view's graph is alive at a time: the distance's gradient accumulates in
        ``adv.grad`` and the distance comes back without a graph. With ``view_sets``, ``drawn`` (an empty list at
        the first step, then the same one) keeps the first steps' views and their references for the later steps."""
        members = self._members()
        if drawn is not None and step >= self.view_sets:
            views, references = drawn[step % self.view_sets]
        else:
            views = self.tracker_views.sample(generator, len(members))
            references = [None] * len(views) if photo_references is None else \
                [photo_references[view.model] for view in views]
            if drawn is not None:
                drawn.append((views, references))
        count = len(views) + bool(self.whole_view)
        total = torch.zeros(adv.shape[0], device=adv.device)
        for i, view in enumerate(views):
            model = members[view.model]
            if references[i] is None:
                with torch.no_grad():
                    references[i] = self._pooled(model, view(x))
            reference = references[i]
            if differentiate:  # the view's graph starts at the part of adv it reads: its gradient has that size
                top, bottom, left, right = view.reach(tuple(adv.shape[-2:]))
                part = adv.detach()[..., top:bottom, left:right].requires_grad_(True)
                moved = self._pooled(model, view(part, photo=tuple(adv.shape[-2:])))
            else:
                moved = self._pooled(model, view(adv))
            share = sum((a - b).pow(2).sum(dim=1) for a, b in zip(moved, reference)) / (len(self.poolings) * count)
            total = total + _spent(share, differentiate)
            if differentiate:
                if adv.grad is None:
                    adv.grad = torch.zeros_like(adv)
                adv.grad[..., top:bottom, left:right] += part.grad
        if self.whole_view:
            k = step % len(members) if self.whole_view == "cycle" else 0
            whole = members[k](resize_long_side(adv, self.size), scales=self.scales)
            total = total + _spent((whole - whole_targets[k]).pow(2).sum(dim=1) / count, differentiate)
        return total

    def similarity_to_original(self, images: torch.Tensor) -> list[float]:
        """Descriptor cosine similarity of ``images`` (e.g. the decoded output files) to the last call's input."""
        return cosine_similarity(self.model, images, self.original_descriptor, self.size, self.scales)

    def _perturbation_size(self, x: torch.Tensor) -> tuple[int, int]:
        h, w = x.shape[-2:]
        scale = min(1.0, self.size / max(h, w)) / self.coarseness  # never finer than the photo itself
        return max(1, round(h * scale)), max(1, round(w * scale))

    def _compose(self, x: torch.Tensor, v: torch.Tensor, gain: torch.Tensor | None = None) -> Composition:
        """The photo ``x`` changed by the perturbation ``v`` (times ``gain``), as a :class:`Composition`.

        In ``quantised`` mode the change is rounded to whole grey levels (straight-through): the saved 8-bit photo is
        ``x + round(v)`` for a photo on the 8-bit grid. Only the resampling of ``v`` to the photo's size keeps a
        graph; :meth:`Composition.backward` is the rest's backward pass, its values those of the graph of
        ``clamp(x + straight_through(change), 0, 1)`` and of the straight-through codec after it to the bit. That
        graph would allocate a dozen tensors of the photo's size in every step, each a fresh mapping with its page
        faults: at 12 megapixels a large share of a step.
        """
        change = resample(v, x.shape[-2:])
        with torch.no_grad():
            scaled = change.detach() if gain is None else change.detach() * gain
            quantised = self.saving == "quantised"
            # quantised: the straight-through value scaled + (rounded - scaled) is the rounded change itself (a
            # change and its rounding are within a factor of 2 or the rounding is 0: the difference is exact)
            perturbed = (scaled * 255).round_().div_(255).add_(x) if quantised else x + scaled
            # where the clamp stops the gradient
            outside = (perturbed >= 0).logical_and_(perturbed <= 1).logical_not_()
            pixels = perturbed.clamp_(0, 1)
            # the codec straight through, its value pixels + (decoded - pixels) as floats round it
            seen = self.codec(pixels).sub_(pixels).add_(pixels) if quantised and self.codec is not None else pixels
        return Composition(change, pixels, seen, outside, gain)

    def render(self, x: torch.Tensor, v: torch.Tensor, saving: str | None = None) -> torch.Tensor:
        """The 8-bit image a saving mode makes of ``x`` and a working-resolution perturbation ``v``
        (e.g. :attr:`perturbation` after a call), so one optimisation can be saved in every mode."""
        return self._render(x, v, saving, self._gain(x))

    def _render(self, x: torch.Tensor, v: torch.Tensor, saving: str | None, gain: torch.Tensor | None) -> torch.Tensor:
        """:meth:`render` with the change's factor ``gain`` of ``x`` (:meth:`_gain`) already computed."""
        saving = saving or self.saving
        _check(saving in SAVING_MODES, f"saving must be one of {SAVING_MODES}, got {saving!r}")
        delta = resample(v, x.shape[-2:])
        if gain is not None:
            delta = delta * gain
        if saving == "x10":
            delta = 10 * delta
        elif saving == "refined":
            # p(v): entries that rounding would erase become one grey level; the others survive as they are.
            small = (delta != 0) & (delta.abs() < 0.5 / 255)
            delta = torch.where(small, torch.sign(delta) / 255, delta)
        return quantise(x + delta)

    def _gain(self, x: torch.Tensor) -> torch.Tensor | None:
        """(N, 1, H, W) factor of the change at each pixel of ``x``: 0 in flat regions with ``spare_flat``."""
        return None if self.spare_flat is None else flat_gain(x, self.spare_flat)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images)

    @property
    def passes_precision(self) -> str:
        """What the network passes run in on the model's device: ``float32``, ``bfloat16`` or ``float16`` (``auto``
        resolved; :func:`~advquery.models.precision.autocast_dtype`)."""
        return precision_name(autocast_dtype(self.precision, self._members()[0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Protected versions of ``images`` (N, 3, H, W) in [0, 1].

        The passes reuse freed memory (:func:`~advquery.models.memory.reused_memory`) for photos up to
        :data:`REUSED_MEMORY_SIDES` times the working size on their long side; a larger photo's full-resolution
        tensors, freed and allocated again in every step, would leave holes in the heap that the passes' activations
        cannot fill (``bench/results/allocator.md``: the peak memory of a 12-megapixel photo's protection)."""
        check_images(images)
        small = max(images.shape[-2:]) <= REUSED_MEMORY_SIDES * self.size
        with reused_memory() if small else nullcontext():
            return self._optimise(images)

    def _optimise(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s optimisation, on checked images."""
        x = images.detach().to(self.model.device, torch.float32)
        n = x.shape[0]
        generator = torch.Generator(device=x.device)
        if self.seed is None:
            generator.seed()  # nondeterministic, without touching the global RNG
        else:
            generator.manual_seed(self.seed)
        amp = autocast_dtype(self.precision, self._members()[0])  # the same as passes_precision says
        with torch.no_grad():
            whole_targets = None if self.tracker_views is None else self.whole_targets(x)
            if whole_targets is not None and all(t is not None for t in whole_targets):  # the members described once
                target = ModelEnsemble.combine(whole_targets)[:, None]
            else:
                target = self.describe(x)[:, None]
            photo_references = self.photo_references(x) \
                if self.tracker_views is not None and self.view_reference == "photo" else None
            gain = self._gain(x)
            x_pert, bound = self._perturbation_bound(x)
            ssim_price = SSIMPrice(x, self.ssim_weight) if self.ssim_weight else None
            # black-and-white photos (every photo with grey_change): one change for the three channels
            grey = monochrome(x) | self.grey_change
        v = (torch.rand(x_pert.shape, generator=generator, device=x.device) * 2 - 1) * bound \
            if self.random_start else torch.zeros_like(x_pert)
        v = (x_pert + v).clamp(0, 1) - x_pert
        share_channels(v, grey)
        v.requires_grad_(True)
        coarse, coarse_bound = self._coarse_layer(bound)
        optimiser = torch.optim.Adam([v] if coarse is None else [v, coarse], lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, self.steps) \
            if self.lr_schedule == "cosine" else None
        best_objective = torch.full((n,), -math.inf, device=x.device)
        best_distance = torch.zeros(n, device=x.device)
        best_v = v.detach().clone()
        self.snapshots = []
        since_best = torch.zeros(n, dtype=torch.long, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        steps_used = torch.full((n,), self.steps, dtype=torch.long, device=x.device)
        drawn = [] if self.view_sets and self.tracker_views is not None else None  # the view sets' views (view_sets)
        for step in range(self.steps):
            total = v if coarse is None else v + resample(coarse, v.shape[-2:])
            photo = self._compose(x, total, gain)
            seen = photo.seen.requires_grad_(True)  # the views' input: their graphs end here, one at a time
            with autocast(amp, x.device):
                if self.tracker_views is None:
                    distance = _spent((self.views(seen, generator) - target).pow(2).sum(dim=2).mean(dim=1), True)
                else:
                    distance = self.view_distance(seen, x, generator, whole_targets, photo_references, step, True,
                                                  drawn)
            # The SSIM cost of the perturbation, before the codec: the codec's own loss is there with or
            # without it, and a straight-through codec cannot be steered to lose less.
            price, price_gradient = (None, None) if ssim_price is None else ssim_price(photo.pixels)
            objective = distance if price is None else distance - price
            with torch.no_grad():  # bookkeeping for the image v currently represents
                improved = objective > best_objective
                best_objective = torch.where(improved, objective, best_objective)
                best_distance = torch.where(improved, distance, best_distance)
                best_v[improved] = total.detach()[improved]
                if self.snapshot_every and (step + 1) % self.snapshot_every == 0:
                    self.snapshots.append((step + 1, best_v.clone()))
                since_best = torch.where(improved, 0, since_best + 1)
                finished = ~done & self._finished(best_distance, since_best)
                steps_used[finished] = step
                done |= finished
            if bool(done.all()):
                break
            optimiser.zero_grad(set_to_none=True)
            # the distance's gradient, gathered on the views' input, back through the composition (with the price's)
            gradient = seen.grad.neg_()
            photo.backward(gradient if price is None else gradient.add_(price_gradient))
            for p in optimiser.param_groups[0]["params"]:
                if p.grad is not None:
                    if self.gradient_blur:
                        p.grad.copy_(gaussian_blur(p.grad, self.gradient_blur))
                    share_channels(p.grad, grey)
            optimiser.step()
            if schedule is not None:
                schedule.step()
            with torch.no_grad():  # project the sum onto the bound and onto valid pixels (through the fine layer)
                offset = 0
                if coarse is not None:
                    coarse.copy_(torch.maximum(torch.minimum(coarse, coarse_bound), -coarse_bound))
                    offset = resample(coarse, v.shape[-2:])
                projected = torch.maximum(torch.minimum(v + offset, bound), -bound)
                v.copy_((x_pert + projected).clamp(0, 1) - x_pert - offset)
                share_channels(v, grey)  # the channels of a photo nearly but not exactly grey clamp apart
            if self.on_step is not None:
                self.on_step(step + 1, self.steps)
        self.perturbation = best_v
        self.original_descriptor = target[:, 0]
        with torch.no_grad():
            out = self._render(x, best_v, None, gain)  # the gain of the steps, not computed again
            similarity = (self.describe(out) * target[:, 0]).sum(dim=1)
        self.stats = AttackStats(steps_used.tolist(), similarity.tolist())
        return out.to(images.device, images.dtype)

    def _coarse_layer(self, bound: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The coarse component (zeros, requiring grad) and its bound, the block means of the perturbation's
        ``bound``; (None, None) without ``coarse_layer``."""
        if self.coarse_layer is None:
            return None, None
        shape = tuple(max(1, round(side / self.coarse_layer)) for side in bound.shape[-2:])
        coarse_bound = F.adaptive_avg_pool2d(bound, shape)
        return torch.zeros_like(coarse_bound, requires_grad=True), coarse_bound

    def _finished(self, best_distance: torch.Tensor, since_best: torch.Tensor) -> torch.Tensor:
        finished = torch.zeros_like(since_best, dtype=torch.bool)
        if self.target_similarity is not None:
            # ||a - b||^2 = 2 - 2 cos for unit vectors: the mean loss gives the mean similarity over the views.
            finished |= 1 - best_distance / 2 <= self.target_similarity
        if self.patience is not None:
            finished |= since_best >= self.patience
        return finished
