"""The trackers a protected photo must hold against, defined once for the benchmark, ``verify`` and the web page.

A tracker is a retrieval system and an edit of the query file: the edit is done on the decoded 8-bit
photo and saved again as 8 bit, as a platform or a person would (:mod:`advquery.transforms`), then the
system describes it, the whole photo or a selection of it (a bounding box that follows the edit).

- :data:`SYSTEMS`: GeM on EfficientNet-Lite0, Lite1 and Lite2 at working sizes 512, 768 and 1024, multi-scale
  GeM at 1024 (working sizes 1024, 724 and 512 combined as cirtorch does), MAC, SPoC and R-MAC on the same
  trunks at 1024, and GeM at 1024 with a PCA whitening learned on the tracker's database. SIFT-HE, CEDD and
  GIST (:mod:`advquery.systems`) are the hand-crafted systems (:data:`HANDCRAFTED`).
- :data:`EDITS`: none; JPEG 95 / 85 / 75 / 50; WebP 80; downscales to 75 / 50 / 25 % and an upscale to 150 %;
  central crops keeping 90 / 75 / 60 % of each side; corner crops of 80 % anchored at each corner; aspect crops
  1:1, 4:5 and 16:9; a horizontal flip; rotations by +-3 degrees; a Gaussian blur, an unsharp mask, brightness,
  contrast, saturation and gamma filters of a photo app's strength; two platform chains.

:class:`SuiteDescriber` describes an image with many systems at once: each trunk runs once per working size
and its feature map is pooled every way. :func:`check_protection` is the users' check: the descriptor
similarity of a photo and its protected version under each tracker, with a verdict calibrated on the
tracker benchmark (``bench/trackers.py``).
"""
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

import numpy as np
import torch

from .extraction import prepare
from .io import to_tensor
from .models import DescriptorModel, Whitening, load_model
from .transforms import Box, TransformChain, parse_transform

MODELS = ("efficientnet-lite0-gem", "efficientnet-lite1-gem", "efficientnet-lite2-gem")
MULTISCALE_SIZES = (1024, 724, 512)  # 1024 px times 1, 1/sqrt(2), 1/2
VERDICTS = ("blocked", "weakened", "still found")
CALIBRATION = "tracker_calibration.json"  # in advquery/data, written by bench/trackers.py


@dataclass(frozen=True)
class System:
    """A neural retrieval system: a built-in trunk, a working size, a pooling, optionally multi-scale or whitened."""

    model: str
    size: int = 1024
    pooling: str = "gem"  # gem | mac | spoc | rmac
    multiscale: bool = False
    whitened: bool = False  # PCA whitening learned on the database (GeM only)

    @property
    def name(self) -> str:
        trunk = self.model.removeprefix("efficientnet-").removesuffix("-gem")
        return " ".join([trunk, self.pooling, str(self.size)] + ["ms"] * self.multiscale + ["pcaw"] * self.whitened)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The working sizes whose feature maps it needs."""
        return MULTISCALE_SIZES if self.multiscale else (self.size,)

    @property
    def base(self) -> "System":
        """The system without its whitening."""
        return System(self.model, self.size, self.pooling, self.multiscale)


def _systems_of(model: str) -> list[System]:
    return ([System(model, s) for s in (512, 768, 1024)] + [System(model, multiscale=True)]
            + [System(model, pooling=p) for p in ("mac", "spoc", "rmac")] + [System(model, whitened=True)])


SYSTEMS: tuple[System, ...] = tuple(s for m in MODELS for s in _systems_of(m))
HANDCRAFTED = ("sift-he", "cedd", "gist")


@dataclass(frozen=True)
class Edit:
    """An edit of the query file, as a transformation spec (:func:`advquery.transforms.parse_transform`);
    ``none`` leaves the file as it is."""

    spec: str

    @cached_property
    def chain(self) -> TransformChain | None:
        return None if self.spec == "none" else parse_transform(self.spec)

    def apply(self, rgb: np.ndarray, box: Box | None = None) -> tuple[np.ndarray, Box | None]:
        """The edited (H, W, 3) uint8 photo and its box (None: none, or cropped away)."""
        return (rgb, box) if self.chain is None else self.chain.apply(rgb, box)


EDITS: tuple[Edit, ...] = tuple(Edit(s) for s in (
    "none", "jpeg:95", "jpeg:85", "jpeg:75", "jpeg:50", "webp:80",
    "resize:0.75", "resize:0.5", "resize:0.25", "resize:1.5",
    "crop:0.9", "crop:0.75", "crop:0.6", "crop-tl:0.8", "crop-tr:0.8", "crop-bl:0.8", "crop-br:0.8",
    "aspect:1", "aspect:0.8", "aspect:1.778", "flip", "rotate:3", "rotate:-3",
    "blur:1", "unsharp:0.8", "brightness:1.15", "contrast:1.2", "saturation:1.3", "gamma:0.8",
    "resize:0.6,jpeg:80", "aspect:0.8,resize:0.6,jpeg:80"))


@dataclass(frozen=True)
class Tracker:
    """A retrieval system and the edit it applies to the query file."""

    system: System
    edit: Edit

    @property
    def name(self) -> str:
        return f"{self.system.name} / {self.edit.spec}"


def system(name: str) -> System:
    """The system of :data:`SYSTEMS` called ``name`` (e.g. ``'lite0 gem 1024'``)."""
    found = [s for s in SYSTEMS if s.name == name]
    if not found:
        raise ValueError(f"unknown system {name!r}; systems: {', '.join(s.name for s in SYSTEMS)}")
    return found[0]


def edit(spec: str) -> Edit:
    """The edit of :data:`EDITS` written ``spec``."""
    if Edit(spec) not in EDITS:
        raise ValueError(f"unknown edit {spec!r}; edits: {', '.join(e.spec for e in EDITS)}")
    return Edit(spec)


# The quick subset: systems and edits that tell most in few passes (benchmark iteration on the validation split).
QUICK_SYSTEMS = tuple(system(n) for n in ("lite0 gem 1024", "lite0 gem 768", "lite0 rmac 1024", "lite1 gem 1024",
                                          "lite2 gem 1024", "lite2 gem 512"))
QUICK_EDITS = tuple(edit(s) for s in ("none", "webp:80", "crop:0.75", "crop-br:0.8", "aspect:1", "flip", "rotate:3",
                                      "resize:0.6,jpeg:80", "aspect:0.8,resize:0.6,jpeg:80"))
# What ``verify --trackers quick`` checks: a handful of cells across sizes, edits and models.
VERIFY_QUICK = tuple(Tracker(system(s), edit(e)) for s, e in (
    ("lite0 gem 1024", "none"), ("lite0 gem 768", "none"), ("lite0 gem 1024", "flip"),
    ("lite0 gem 1024", "aspect:1"), ("lite0 gem 1024", "resize:0.6,jpeg:80"), ("lite0 rmac 1024", "crop:0.75"),
    ("lite2 gem 1024", "none")))
# ``verify --trackers full``: every neural system that needs no database (not the whitened ones) under every edit.
VERIFY_FULL = tuple(Tracker(s, e) for s in SYSTEMS if not s.whitened for e in EDITS)


def learn_pca_whitening(descriptors: np.ndarray, dim: int = 256) -> Whitening:
    """PCA whitening learned on (n, D) descriptors: ``P (x - m)`` onto the top ``dim`` principal axes, each
    scaled to unit variance (then L2, :class:`~advquery.models.Whitening`)."""
    x = np.asarray(descriptors, np.float64)
    m = x.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(x - m, rowvar=False))
    top = np.argsort(values)[::-1][:min(dim, len(x) - 1)]
    P = (vectors[:, top] / np.sqrt(values[top])).T
    return Whitening(torch.from_numpy(m).float(), torch.from_numpy(P).float())


class SuiteDescriber:
    """Descriptors of an image under many systems at once: each trunk runs once per working size it is needed
    at, and its feature map is pooled every way asked for.

    Args:
        systems: the neural systems (default: :data:`SYSTEMS`).
        device: torch device (default: CUDA if present, else CPU).
        whitening: ``{whitened system: Whitening}``, e.g. from :meth:`fit_whitening`; needed to describe a
            whitened system.
    """

    def __init__(self, systems: Sequence[System] = SYSTEMS, device: str | torch.device | None = None,
                 whitening: dict[System, Whitening] | None = None):
        self.systems = tuple(systems)
        self.models: dict[str, DescriptorModel] = {m: load_model(m, device) for m in dict.fromkeys(
            s.model for s in self.systems)}
        self.whitening = dict(whitening or {})

    def fit_whitening(self, database: dict[System, np.ndarray], dim: int = 256) -> None:
        """Learn each whitened system's PCA whitening on its base system's database descriptors."""
        for s in self.systems:
            if s.whitened:
                self.whitening[s] = learn_pca_whitening(database[s.base], dim)

    @torch.inference_mode()
    def describe(self, rgb: np.ndarray, box: Box | None = None,
                 systems: Sequence[System] | None = None) -> dict[System, np.ndarray]:
        """``{system: (D,) float32 descriptor}`` of an (H, W, 3) uint8 photo, or of its ``box`` crop (bounding-box
        query: the crop scaled by the factor the whole photo gets), for ``systems`` (default: all of them)."""
        systems = self.systems if systems is None else tuple(systems)
        needed: dict[tuple[str, int], set[str]] = {}  # (model, working size) -> poolings
        for s in systems:
            for size in s.sizes:
                needed.setdefault((s.model, size), set()).add(s.pooling)
        x = to_tensor(rgb)
        pooled: dict[tuple[str, int, str], torch.Tensor] = {}
        for (name, size), poolings in needed.items():
            model = self.models[name]
            fmap = model.feature_map(prepare(x.to(model.device), size, box))
            for pooling in poolings:
                pooled[name, size, pooling] = model.pool_map(fmap, pooling)
        out = {}
        for s in systems:
            if s.multiscale:
                v = self.models[s.model].combine_scales([pooled[s.model, size, s.pooling] for size in s.sizes])
            else:
                v = pooled[s.model, s.size, s.pooling]
            if s.whitened:
                if s not in self.whitening:
                    raise ValueError(f"{s.name}: no whitening learned; call fit_whitening on the database first")
                v = self.whitening[s].to(v.device)(v)
            out[s] = v[0].float().cpu().numpy()
        return out


@dataclass(frozen=True)
class TrackerCheck:
    """What one tracker makes of a protected photo: the similarity of its descriptors of the photo and of the
    protected photo, both edited alike, and what that similarity means for retrieval."""

    tracker: str
    similarity: float
    verdict: str  # blocked | weakened | still found
    firm: bool  # False: the similarity is within a threshold's calibration interval, the verdict could go either way


def verdict_summary(verdicts: Iterable[str], near: int = 0) -> str:
    """How many trackers gave each verdict, in the order of :data:`VERDICTS`, and how many of those verdicts
    (``near``) are not firm: "2 blocked, 1 weakened, 3 still found; 1 near a threshold" (``advquery verify``'s
    summary line and the web page's)."""
    verdicts = list(verdicts)
    unknown = set(verdicts) - set(VERDICTS)
    if unknown:
        raise ValueError(f"unknown verdicts {sorted(unknown)}; expected {', '.join(VERDICTS)}")
    if not 0 <= near <= len(verdicts):
        raise ValueError(f"near must count some of the {len(verdicts)} verdicts, got {near}")
    return ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS) + f"; {near} near a threshold" * bool(near)


def verdict_between(value: float, blocked: float, found: float) -> str:
    """The verdict of ``value`` (a similarity, or a share of the original AP) given its two bounds: blocked at or
    below ``blocked``, still found at or above ``found``, weakened between."""
    return VERDICTS[0] if value <= blocked else VERDICTS[2] if value >= found else VERDICTS[1]


POOLED = "all systems"  # the thresholds fitted on every system's pairs together
CALIBRATION_SHARES = {"blocked": 0.25, "found": 0.75}  # verdict bounds on the share of the original AP kept
CALIBRATION_ROUNDS = 200  # bootstrap resamplings of the queries behind each threshold's interval
CALIBRATION_PERCENTILES = (5.0, 95.0)  # of the resampled thresholds: a 90 % interval
# Pairs whose tracker hardly finds the unprotected query (its AP below this) are left out of the fit: the share of
# such an AP swings with one database photo. Chosen on the validation split (docs/methods.md).
CALIBRATION_MIN_AP = 0.1


@dataclass(frozen=True)
class Calibration:
    """Similarity thresholds of the verdicts, per system: at or below ``blocked`` the tracker keeps at most the
    calibrated share of its retrieval (``shares['blocked']`` of the original's AP), at or above ``found`` at
    least ``shares['found']``; between them, weakened. A system the benchmark did not calibrate on its own
    takes the thresholds fitted on all systems' pairs together (:data:`POOLED`).

    ``intervals`` holds, per system, the range each threshold moves over when the calibration queries are drawn
    again (a bootstrap): a similarity inside one of them gives a verdict that other calibration queries could
    have turned (:meth:`firm`). ``points``: the file, relative to the repository, of the pairs it was fitted on
    (None: not recorded)."""

    thresholds: dict[str, tuple[float, float]]  # system name (or POOLED) -> (blocked, found)
    shares: dict[str, float]
    source: str
    intervals: dict[str, tuple[tuple[float, float], tuple[float, float]]]  # as thresholds -> (blocked's, found's)
    points: str | None = None

    @classmethod
    def load(cls) -> "Calibration":
        data = json.loads(resources.files("advquery").joinpath("data", CALIBRATION).read_text())
        return cls({k: tuple(v) for k, v in data["thresholds"].items()}, data["shares"], data["source"],
                   {k: tuple(map(tuple, v)) for k, v in data["intervals"].items()}, data["points"])

    @classmethod
    def fit(cls, points: Sequence[dict], systems: Sequence[str], source: str, rounds: int = CALIBRATION_ROUNDS,
            seed: int = 0, min_original_ap: float = CALIBRATION_MIN_AP,
            points_file: str | None = None) -> "Calibration":
        """The thresholds of each of ``systems`` (names) and of :data:`POOLED`, from (similarity, share of the
        original AP kept) pairs: ``points`` as dicts with ``system``, ``query``, ``similarity``, ``share`` and
        ``original_ap``, those with an ``original_ap`` below ``min_original_ap`` left out. A threshold is where an
        isotonic (non-decreasing) fit of share on similarity crosses its bound; its interval spans the middle 90 %
        of the thresholds fitted on ``rounds`` resamplings of the queries (with replacement: the pairs of one query
        are not independent of each other), widened where needed to contain the threshold itself."""
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        points = [p for p in points if p["original_ap"] >= min_original_ap]
        names = [*systems, POOLED]
        thresholds = _fit_thresholds(points, names)
        by_query: dict[str, list[dict]] = {}
        for p in points:
            by_query.setdefault(p["query"], []).append(p)
        queries = sorted(by_query)
        generator = np.random.default_rng(seed)
        resampled: dict[str, list[tuple[float, float]]] = {n: [] for n in thresholds}
        for _ in range(rounds):
            drawn = [p for i in generator.integers(len(queries), size=len(queries)) for p in by_query[queries[i]]]
            for n, fitted in _fit_thresholds(drawn, list(thresholds)).items():
                resampled[n].append(fitted)
        intervals = {}
        for n, (blocked, found) in thresholds.items():
            spans = []
            for point, values in ((blocked, [r[0] for r in resampled[n]]), (found, [r[1] for r in resampled[n]])):
                low, high = np.percentile(values, CALIBRATION_PERCENTILES) if values else (point, point)
                spans.append((min(float(low), point), max(float(high), point)))
            intervals[n] = tuple(spans)
        return cls(thresholds, dict(CALIBRATION_SHARES), source, intervals, points_file)

    def to_json(self) -> str:
        return json.dumps({"thresholds": self.thresholds, "intervals": self.intervals, "shares": self.shares,
                           "source": self.source, "points": self.points}, indent=1)

    def _key(self, system: System) -> str:
        return system.name if system.name in self.thresholds else POOLED

    def verdict(self, system: System, similarity: float) -> str:
        return verdict_between(similarity, *self.thresholds[self._key(system)])

    def firm(self, system: System, similarity: float) -> bool:
        """Whether the verdict would stand for most draws of the calibration queries: ``similarity`` lies outside
        the intervals of both thresholds."""
        return not any(low <= similarity <= high for low, high in self.intervals[self._key(system)])


def _fit_thresholds(points: Sequence[dict], names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(blocked, found) per name with at least 10 pairs (:data:`POOLED`: all pairs): the similarities where the
    isotonic fit of share on similarity last stays at or below the blocked bound and first reaches the found
    one."""
    thresholds = {}
    for name in names:
        pts = sorted((p["similarity"], min(p["share"], 1.5)) for p in points if name in (p["system"], POOLED))
        if len(pts) < 10:
            continue
        sims = [x for x, _ in pts]
        fitted = _isotonic([y for _, y in pts])
        blocked = [x for x, y in zip(sims, fitted) if y <= CALIBRATION_SHARES["blocked"]]
        found = [x for x, y in zip(sims, fitted) if y >= CALIBRATION_SHARES["found"]]
        thresholds[name] = (float(blocked[-1]) if blocked else float(sims[0]) - 1e-6,
                            float(found[0]) if found else float(sims[-1]))
    return thresholds


def _isotonic(y: Sequence[float]) -> list[float]:
    """Pool-adjacent-violators fit of ``y`` (in the order of its abscissae) to a non-decreasing sequence."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in y:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    return [m for m, w in blocks for _ in range(int(w))]


SUITES = {"quick": VERIFY_QUICK, "full": VERIFY_FULL}


def check_protection(original: np.ndarray, protected: np.ndarray, suite: str = "quick",
                     device: str | torch.device | None = None,
                     describer: SuiteDescriber | None = None) -> list[TrackerCheck]:
    """The check of a protected photo against the trackers of ``suite`` (``quick`` or ``full``), no database
    needed: for each tracker the cosine similarity of its descriptors of ``original`` and ``protected``
    ((H, W, 3) uint8 photos), both given the tracker's edit, and the calibrated verdict.

    ``describer``: a :class:`SuiteDescriber` of (at least) the suite's systems to reuse (its models stay loaded).
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}, got {suite!r}")
    trackers = SUITES[suite]
    describer = describer or SuiteDescriber(tuple(dict.fromkeys(t.system for t in trackers)), device)
    calibration = Calibration.load()
    by_edit: dict[Edit, list[Tracker]] = {}
    for t in trackers:
        by_edit.setdefault(t.edit, []).append(t)
    checks = {}
    for e, group in by_edit.items():
        systems = [t.system for t in group]
        a, b = (describer.describe(e.apply(photo)[0], systems=systems) for photo in (original, protected))
        for t in group:
            similarity = float(a[t.system] @ b[t.system])
            checks[t] = TrackerCheck(t.name, similarity, calibration.verdict(t.system, similarity),
                                     calibration.firm(t.system, similarity))
    return [checks[t] for t in trackers]


def share_summary(shares: Iterable[float]) -> dict[str, float]:
    """Median, 90th percentile and worst (largest) of the per-cell shares of the original mAP."""
    values = np.asarray([v for v in shares if not math.isnan(v)], np.float64)
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)), "worst": float(values.max())}
