"""Protecting photo files: read, attack, save atomically, measure the decoded result.

The functional core behind ``advquery protect`` and the demo: strength presets, the attack a
preset stands for, and :func:`protect_file`, which never touches its input and measures
quality and effect on the file as written.
"""
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

from .attacks import CVPIRE, PIRE, SDPIRE, SSIMPIRE, GaussianNoise, KeypointAttack, MaskedPIRE, PerturbationAttack
from .attacks.views import TrackerViews
from .attacks.keypoints import METHODS as KEYPOINT_METHODS
from .extraction import DEFAULT_SIZE, cosine_similarity, describe
from .io import Photo, read_photo, suffix_for_format, to_tensor, to_uint8, write_grey_atomic, write_photo_atomic
from .models import DescriptorModel, ModelEnsemble, load_model
from .quality import flat_changed, quality_report
from .transforms import jpeg_round_trip

PRESET_METHODS = ("ssim-pire", "pire", "masked-pire")  # budget, steps, views, models and grid from the preset
GRADIENT_METHODS = (*PRESET_METHODS, "cv-pire", "sd-pire")
METHODS = (*GRADIENT_METHODS, *KEYPOINT_METHODS, "noise")
DEFAULT_NOISE_SSIM = 0.99  # noise: about the SSIM of the gradient presets' outputs
# CV-PIRE and SD-PIRE use the thesis settings: the budget map times m = 50 grey levels, 100 steps.
THESIS_M, THESIS_STEPS = 50, 100
MASK_GAIN = 4.0  # masked-pire: texture may take up to 4x the flat-region budget
DEFAULT_METHOD = "ssim-pire"  # every preset's: the others stay for research (protect --method)
# Strength's fields its repr shows only where set (see there)
LATER_FIELDS = ("grey_change", "gradient_blur", "view_sets")


@dataclass(frozen=True)
class Strength:
    """One configuration of the protection method (ssim-pire through tracker views): a preset.

    ``ssim_eps_levels`` and ``ssim_weight`` are the L-infinity bound, in grey levels, and the SSIM price of
    ssim-pire, which stops on ``patience`` alone (its objective already weighs effect against SSIM; None: it runs
    every step); ``views`` the tracker views (:class:`~advquery.attacks.views.TrackerViews`) drawn in every step
    (None: the saved file alone), with ``poolings`` the poolings pushed away in each view and ``models`` the
    built-in models attacked beside the chosen one (each view drawn for one of them), and ``whole_view`` whether
    every step also pushes the chosen model's descriptor of the whole photo at the working size (one more pass per
    step beside the views; ``"cycle"``: each attacked model's in turn), ``view_reference`` what each view is
    pushed away from (``view``, every preset's: the same view of the original; ``photo``: the original photo's
    descriptor, computed once; :class:`~advquery.attacks.base.PerturbationAttack`); ``lr_schedule`` how the step
    size moves over the steps (``constant`` or ``cosine``, :class:`~advquery.attacks.base.PerturbationAttack`);
    ``grid`` the largest long side, in pixels, of the grid the perturbation lives on (None: the working
    resolution), ``coarse_layer`` how many times coarser again a second, low-frequency component is (None: none;
    :class:`~advquery.attacks.base.PerturbationAttack`); ``spare_flat`` the flat-region threshold, in grey levels of
    local luminance deviation, below which pixels are left unchanged (None: none are spared); ``grey_change`` whether
    every photo's three channels change together, ``gradient_blur`` the sigma of a blur of each step's gradient and
    ``view_sets`` how many steps' views are drawn, later steps taking them again (all for research;
    :class:`~advquery.attacks.base.PerturbationAttack`).
    A JPEG output is in the loop: the views see the file as saved.

    For the research methods run with a preset (``protect --method``): ``eps_levels`` is the flat-region budget
    of masked-pire and the L-infinity bound of pire, ``target_similarity`` the descriptor similarity at which
    they and CV-/SD-PIRE stop.
    """

    ssim_eps_levels: float
    ssim_weight: float
    steps: int
    patience: int | None
    views: TrackerViews | None
    models: tuple[str, ...]
    grid: int | None
    spare_flat: float | None
    description: str
    eps_levels: float
    target_similarity: float
    poolings: tuple[str, ...] = ("gem",)
    whole_view: bool | str = True
    lr_schedule: str = "constant"
    coarse_layer: int | None = None
    view_reference: str = "view"
    # Fields added since the benchmarks began keying their cached photos and recorded definitions by this repr:
    # shown only where they differ from their default, so that adding one changes no existing setting's repr.
    grey_change: bool = False
    gradient_blur: float = 0.0
    view_sets: int | None = None

    def __repr__(self) -> str:
        shown = [f for f in fields(self) if f.name not in LATER_FIELDS or getattr(self, f.name) != f.default]
        return f"{type(self).__name__}({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in shown)})"

    def budget_levels(self, method: str = DEFAULT_METHOD) -> float:
        """The budget, in grey levels, this preset gives a preset method: ssim-pire's bound, else ``eps_levels``."""
        return self.ssim_eps_levels if method == "ssim-pire" else self.eps_levels


OTHER_MODELS = ("efficientnet-lite1-gem", "efficientnet-lite2-gem")  # medium and high attack all three built-ins
# high's views pass, 30 % of them, through a copy of this long side (px) before the working size: a query shrunk
# to a thumbnail and enlarged again by the tracker.
THUMBNAIL_SHRINK = (256, 640)
# medium's and high's views beside their own, two a step: a query shrunk to a thumbnail of 224-384 px and described
# at a small working size (448-768 px), a pass of about a third of a 1024 px one.
THUMBNAILS = TrackerViews(count=2, sizes=(448, 768), shrink=(224, 384), shrink_probability=1.0, jpeg_probability=0.5,
                          whole=0.5)
STRENGTHS = {
    # Chosen on the validation split against the tracker suite (bench/candidates.py, bench/results/candidates_*.md;
    # the figures are in docs/benchmarks.md, the reasoning in docs/methods.md).
    "low": Strength(ssim_eps_levels=10, ssim_weight=150, steps=25, patience=None,
                    views=TrackerViews(sizes=(768, 1024), rotate=0.0, colour=0.0, jpeg=None, whole=0.5), models=(),
                    grid=None, spare_flat=2.0, eps_levels=1, target_similarity=0.4, lr_schedule="cosine",
                    description="near-invisible: within 10 grey levels at SSIM price 150, the step size decayed along "
                                "a cosine, flat regions left alone, optimised through the saved file and through "
                                "flips and selections (the whole photo or crops of any aspect, half and half; working "
                                "sizes 768-1024) on Lite0"),
    "medium": Strength(ssim_eps_levels=16, ssim_weight=17, steps=40, patience=None,
                       views=TrackerViews(jpeg_probability=0.75, whole=0.5,
                                          extra=replace(THUMBNAILS, jpeg_probability=0.75)), models=OTHER_MODELS,
                       grid=512, spare_flat=2.0, eps_levels=3, target_similarity=0.2, lr_schedule="cosine",
                       whole_view="cycle", poolings=("gem", "rmac", "map"),
                       description="within 16 levels at SSIM price 17 on a 512 px grid, the step size decayed along "
                                   "a cosine, flat regions left alone, optimised through tracker views (the whole "
                                   "photo or crops and selections of any aspect, half and half; flips, rotations, "
                                   "colour, JPEG in three views of four, working sizes 448-1024) on Lite0, Lite1 and "
                                   "Lite2, and through the photo as shared, under each of them in turn, and through "
                                   "two thumbnails a step (a copy of 224-384 px described at 448-768 px); GeM, R-MAC "
                                   "and the whole feature map pushed away in every view"),
    "high": Strength(ssim_eps_levels=20, ssim_weight=15, steps=60, patience=None,
                     views=TrackerViews(jpeg_probability=0.5, shrink=THUMBNAIL_SHRINK, whole=0.5, extra=THUMBNAILS),
                     models=OTHER_MODELS, grid=512, spare_flat=2.0, eps_levels=4.5, target_similarity=0.1,
                     lr_schedule="cosine", whole_view="cycle", poolings=("gem", "rmac", "map"),
                     description="as medium, within 20 levels at SSIM price 15, 60 steps, JPEG in half the views, 30 % "
                                 "of its own views through a copy of 256-640 px (a shrunk query)"),
}
DEFAULT_STRENGTH = "medium"


@lru_cache(maxsize=3)
def _builtin_model(name: str, device: str) -> DescriptorModel:
    return load_model(name, device=device)


def attacked_models(model: str, others: tuple[str, ...] = ()) -> list[str]:
    """The names of the models an attack with ``model`` and the built-in ``others`` goes through: ``model`` first,
    each once."""
    return list(dict.fromkeys((model, *others)))


def attack_model(model: DescriptorModel, others: tuple[str, ...] = ()) -> DescriptorModel | ModelEnsemble:
    """The model an attack aims at: ``model``, with the built-in models named in ``others`` (an ensemble;
    :func:`attacked_models`)."""
    names = attacked_models(model.name, others)[1:]
    if not names:
        return model
    return ModelEnsemble([model, *(_builtin_model(n, str(model.device)) for n in names)])


def preset_coarseness(preset: Strength, size: int) -> int:
    """How many times coarser than the working resolution ``size`` the preset's perturbation grid is."""
    return 1 if preset.grid is None else max(1, round(size / preset.grid))


def check_method_options(method: str, target_ssim: float | None = None, ssim_weight: float | None = None,
                         eps_levels: float | None = None, steps: int | None = None,
                         names: dict[str, str] | None = None) -> None:
    """Raise ValueError for an option that ``method`` does not take; ``names``: how to call each option in
    the message (the command line's flags), else its keyword. One rule set for :func:`make_attack` and
    ``advquery protect``, which checks before it reads any photo."""
    n = {k: k for k in ("target_ssim", "ssim_weight", "eps_levels", "steps")} | (names or {})
    if target_ssim is not None and method != "noise":
        raise ValueError(f"{n['target_ssim']} applies to the noise method only, not to {method}")
    if ssim_weight is not None and method != "ssim-pire":
        raise ValueError(f"{n['ssim_weight']} applies to ssim-pire only, not to {method}")
    if ssim_weight is not None and not ssim_weight > 0:
        raise ValueError(f"{n['ssim_weight']} must be positive (0 is pire), got {ssim_weight}")
    if method not in GRADIENT_METHODS and (eps_levels is not None or steps is not None):
        raise ValueError(f"{n['eps_levels']} and {n['steps']} apply to {', '.join(GRADIENT_METHODS)} only, "
                         f"not to {method}")


def make_attack(model: DescriptorModel, method: str | None = None, strength: str | Strength = DEFAULT_STRENGTH,
                eps_levels: float | None = None, steps: int | None = None, size: int = DEFAULT_SIZE,
                seed: int | None = None, target_ssim: float | None = None, jpeg_quality: int | None = None,
                coarseness: int | None = None, ssim_weight: float | None = None,
                precision: str = "auto",
                on_step: Callable[[int, int], None] | None = None) -> PerturbationAttack | KeypointAttack | GaussianNoise:
    """The attack a preset stands for, with optional overrides; ``method`` None: ssim-pire, every preset's
    method. ``strength``: the name of a preset of :data:`STRENGTHS`, or a :class:`Strength` of one's own.

    A gradient attack optimises the 8-bit image it will be saved as: with ``jpeg_quality`` (the output
    is a JPEG of that quality), the decoded JPEG, through a straight-through real
    JPEG in every step (at full resolution JPEG quantises a plain 8-bit perturbation away: compare ``low``
    and ``low+jpeg`` in ``bench/results/protect_pire_1024_limit10.md``); a preset's tracker views are drawn
    from that decoded file.

    For ``ssim-pire``, ``masked-pire`` and ``pire`` the preset sets budget, steps, views, models and
    grid (``ssim-pire``: its own bound and SSIM price, ``ssim_weight`` overrides the price); for
    ``cv-pire`` and ``sd-pire`` the thesis settings apply (``eps_levels`` overrides the multiplier
    m) and the preset contributes its early stopping only.

    The model-free methods ignore the preset: the keypoint methods (``rmd``, ``ls``, ``fmd``,
    ``rmd+ls``, ``ls+fmd``) run :class:`KeypointAttack` with its defaults on the photo's own
    resolution, ``noise`` adds Gaussian noise matched to ``target_ssim`` (default
    :data:`DEFAULT_NOISE_SSIM`). ``eps_levels`` and ``steps`` apply to the gradient methods only,
    ``target_ssim`` to ``noise`` only; the model-free methods ignore ``jpeg_quality``.
    ``coarseness`` overrides the preset's perturbation grid (:func:`preset_coarseness`).
    ``precision`` is that of the gradient methods' network passes (:mod:`advquery.models.precision`).
    The gradient methods call ``on_step(steps done, step limit)`` after every step (progress); the
    model-free methods, which have no steps, never do.
    """
    if not isinstance(strength, Strength) and strength not in STRENGTHS:
        raise ValueError(f"unknown strength {strength!r}; available: {', '.join(STRENGTHS)}")
    preset = strength if isinstance(strength, Strength) else STRENGTHS[strength]
    method = method or DEFAULT_METHOD
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    check_method_options(method, target_ssim=target_ssim, ssim_weight=ssim_weight, eps_levels=eps_levels,
                         steps=steps)
    if method in KEYPOINT_METHODS:
        return KeypointAttack(method)
    if method == "noise":
        return GaussianNoise(target_ssim=DEFAULT_NOISE_SSIM if target_ssim is None else target_ssim, seed=seed)
    views = preset.views if method in PRESET_METHODS else None
    codec = partial(jpeg_round_trip, quality=jpeg_quality) if jpeg_quality is not None else None
    if coarseness is None:  # CV-/SD-PIRE keep the thesis's per-pixel maps at the working resolution
        coarseness = preset_coarseness(preset, size) if method in PRESET_METHODS else 1
    # ssim-pire stops on patience alone: its objective already weighs effect against SSIM
    common = dict(size=size, seed=seed, target_similarity=None if method == "ssim-pire" else preset.target_similarity,
                  patience=preset.patience, codec=codec, coarseness=coarseness, precision=precision,
                  on_step=on_step)
    if method in PRESET_METHODS:
        eps = preset.budget_levels(method) if eps_levels is None else eps_levels
        options = dict(eps=eps / 255, steps=preset.steps if steps is None else steps,
                       lr_schedule=preset.lr_schedule, coarse_layer=preset.coarse_layer,
                       grey_change=preset.grey_change, gradient_blur=preset.gradient_blur, **common)
        if views is not None:
            options.update(tracker_views=views, poolings=preset.poolings, spare_flat=preset.spare_flat,
                           whole_view=preset.whole_view, view_reference=preset.view_reference,
                           view_sets=preset.view_sets)
        target = attack_model(model, preset.models)
        if method == "ssim-pire":
            return SSIMPIRE(target, ssim_weight=preset.ssim_weight if ssim_weight is None else ssim_weight, **options)
        return MaskedPIRE(target, max_gain=MASK_GAIN, **options) if method == "masked-pire" else PIRE(target, **options)
    attack = CVPIRE if method == "cv-pire" else SDPIRE
    return attack(model, m=THESIS_M if eps_levels is None else eps_levels,
                  steps=THESIS_STEPS if steps is None else steps, **common)


@dataclass
class ProtectionRecord:
    """One line of the protection report (JSON lines); ``error`` set when the photo failed."""

    input: str
    output: str | None = None
    status: str = "protected"  # protected | skipped | failed
    ssim: float | None = None
    psnr: float | None = None
    linf: float | None = None
    mean_abs_change: float | None = None
    ciede2000: float | None = None
    flat_changed: float | None = None  # share of flat pixels changed by more than 1 level (quality.flat_changed)
    flat_changed_resave: float | None = None  # the same for a plain re-save of the original in the output format
    similarity: float | None = None
    steps: int | None = None  # None for the methods without optimisation steps
    precision: str | None = None  # what the network passes ran in (auto resolved); None without optimisation
    seconds: float | None = None
    keypoints_before: int | None = None  # keypoint methods: SIFT keypoints of the original photo,
    keypoints_removed: int | None = None  # those without a close one in the decoded output,
    keypoints_injected: int | None = None  # and the output's without a close original one
    error: str | None = None
    map: str | None = None  # the budget map file (--save-map)
    note: str | None = None  # why a photo was skipped, when not because its output exists

    def to_json(self) -> dict:
        """JSON-safe dict (an infinite PSNR, for an unchanged photo, becomes null)."""
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


def output_format(photo: Photo | str, requested: str | None) -> str:
    """PIL format to save in: the requested one, else JPEG for JPEG inputs and PNG (lossless) for the rest
    (``photo``: the photo, or its format from :func:`~advquery.io.image_format`)."""
    if requested:
        return {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}[requested.lower()]
    return "JPEG" if (photo if isinstance(photo, str) else photo.format) == "JPEG" else "PNG"


def output_path(outdir: Path, relative: Path, fmt: str) -> Path:
    """OUTDIR/<relative path>, with the suffix of ``fmt`` unless the input's suffix already names it."""
    target = Path(outdir) / relative
    if target.suffix.lower() not in ({".jpg", ".jpeg"} if fmt == "JPEG" else {suffix_for_format(fmt)}):
        target = target.with_suffix(suffix_for_format(fmt))
    return target


def map_path(outdir: Path, relative: Path) -> Path:
    """Where ``--save-map`` writes a photo's budget map: OUTDIR/maps/<relative path>.png."""
    return Path(outdir) / "maps" / Path(relative).with_suffix(".png")


def budget_image(attack: PerturbationAttack, x: torch.Tensor) -> np.ndarray:
    """(h, w) uint8 picture of the attack's budget for ``x`` at the working resolution, divided by its
    maximum: white where the attack may change the most. A constant budget (PIRE) is all white, a
    zero one (a flat photo under CV-PIRE) all black."""
    budget = attack.budget(x)[0, 0]
    return (budget / budget.max().clamp_min(1e-12)).mul(255).round().to(torch.uint8).cpu().numpy()


def protect_photo(photo: Photo, target: Path, model: DescriptorModel, fmt: str, quality: int = 95,
                  keep_metadata: bool = False, map_target: Path | None = None, **attack_options) -> ProtectionRecord:
    """Protect a decoded photo into the file ``target`` and measure the decoded output against the original.

    ``attack_options`` go to :func:`make_attack` (method, strength, eps_levels, steps, size, seed,
    target_ssim, ssim_weight, precision, on_step); a JPEG output passes its quality, so the attack optimises that
    JPEG. The alpha channel is kept unchanged (PNG), and so is an RGB colour profile (it says how to show the
    pixels; without it a wide-gamut photo, e.g. a phone's Display P3, shows in other colours); EXIF is dropped
    unless ``keep_metadata`` (then without GPS).
    The descriptor similarity is measured with ``model`` at the working size for every method, the
    keypoint changes (keypoint methods) on the decoded output too.
    With ``map_target``, the budget map (:func:`budget_image`) is written there as a greyscale PNG.
    """
    start = time.perf_counter()
    attack = make_attack(model, jpeg_quality=quality if fmt == "JPEG" else None, **attack_options)
    x = to_tensor(photo.rgb)
    protected = to_uint8(attack(x))
    write_photo_atomic(target, protected, alpha=photo.alpha, format=fmt, quality=quality,
                       exif=photo.exif if keep_metadata else None,
                       icc_profile=photo.icc_profile)
    decoded = read_photo(target).rgb  # quality and effect of what was actually written
    if map_target is not None:
        write_grey_atomic(map_target, budget_image(attack, x))
    steps, precision = (attack.stats.steps[0], attack.passes_precision) if isinstance(attack, PerturbationAttack) \
        else (None, None)
    if isinstance(attack, PerturbationAttack) and attack.model is model:
        similarity = attack.similarity_to_original(to_tensor(decoded))[0]
    else:  # model-free methods and ensembles: the chosen model's similarity, the original described here
        size = attack_options.get("size", DEFAULT_SIZE)
        with torch.no_grad():
            reference = describe(model, x, size)
        similarity = cosine_similarity(model, to_tensor(decoded), reference, size)[0]
    keypoints = attack.compare(photo.rgb, decoded) if isinstance(attack, KeypointAttack) else {}
    resaved = to_uint8(jpeg_round_trip(x, quality)) if fmt == "JPEG" else photo.rgb  # what the format alone does
    quality = quality_report(photo.rgb, decoded, torch.get_num_threads())
    return ProtectionRecord(input=str(photo.path), output=str(target), **quality,
                            flat_changed_resave=flat_changed(photo.rgb, resaved),
                            similarity=similarity, steps=steps, precision=precision, seconds=time.perf_counter() - start,
                            keypoints_before=keypoints.get("before"), keypoints_removed=keypoints.get("removed"),
                            keypoints_injected=keypoints.get("injected"),
                            map=None if map_target is None else str(map_target))
