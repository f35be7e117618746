"""Keypoint removal and injection (KR&I) against SIFT, with the PIRE paper's colour recovery.

The older attacks on SIFT-based retrieval that the PIRE paper compares with (section 6.1), from
Do, Kijak, Furon and Amsaleg (2010): RMD (removal with minimum local distortion), LS (local
smoothing), FMD (forging new keypoints with minimum local distortion) and the combinations RMD+LS
and LS+FMD. They modify the grey image the detector sees, ``I_gray = 0.30 R + 0.59 G + 0.11 B``;
colour comes back with the paper's ratio recovery (6.1.2): every channel of a pixel is multiplied
by ``alpha = I_mod / I_gray``, so its hue is kept and the grey of the result is the modified grey.

The detector is OpenCV's SIFT (``cv2.SIFT_create``). A keypoint at (x, y) with OpenCV ``size``
has the scale ``sigma = size / 2`` pixels; its difference-of-Gaussians value is
``D = (G(k sigma) - G(sigma)) * I`` at (x, y), ``k = 2^(1/3)``, in grey levels, and SIFT keeps it
only if ``|D| >= contrast_threshold * 255 / 3`` (3.4 levels at OpenCV's default 0.04) and it is a
local extremum. D is computed here as SIFT computes it (blur applied on top of the 0.5 pixels SIFT
assumes the photo already has, at the resolution of the scale's octave); it agrees closely with
OpenCV's ``response``. Keypoints are grouped into scale bins 1/6 octave wide.

Since ``D = <w, I>`` is linear in the image, with ``w`` the DoG kernel at the keypoint, the patch of
least L2 norm that moves D to a goal value is ``(goal - D) w / ||w||^2``: a DoG-shaped blob, added
for all keypoints of a bin by one splat and one DoG filtering (:func:`_push`). RMD uses it as it
is; FMD sets D at three adjacent scales at once, since a lone DoG blob responds ever more strongly
towards smaller scales and is no scale-space extremum. Every method re-detects after each round,
since changing one keypoint moves or creates others.
"""
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from scipy.spatial import cKDTree

from .base import ImageAttack, _check

METHODS = ("rmd", "ls", "fmd", "rmd+ls", "ls+fmd")
GREY = np.array([0.30, 0.59, 0.11], np.float32)  # PIRE paper 6.1.2
LAYERS = 3  # OpenCV SIFT's scales per octave
K = 2 ** (1 / LAYERS)  # ratio of the two Gaussians of a DoG
INPUT_BLUR = 0.5  # blur OpenCV SIFT assumes the photo already has
MIN_SIGMA = 0.8 * K  # the smallest scale SIFT detects (first DoG layer of the doubled image)
BINS_PER_OCTAVE = 6
PEAK = 0.9  # FMD: DoG values at the neighbouring scales, as a fraction of the forged keypoint's
MATCH_DISTANCE = 0.5  # the same keypoint: within max(1 px, 0.5 sigma) ...
MATCH_OCTAVES = 0.5  # ... and half an octave of scale


@dataclass(frozen=True)
class Keypoints:
    """Keypoints as (K, 2) positions x, y in pixels and (K,) scales sigma in pixels."""

    xy: np.ndarray
    sigma: np.ndarray

    def __len__(self) -> int:
        return len(self.sigma)

    def __getitem__(self, index) -> "Keypoints":
        return Keypoints(self.xy[index], self.sigma[index])


@dataclass
class KeypointStats:
    """Per image of the last call: keypoints detected before and after, originals removed, new ones injected."""

    before: list[int]
    after: list[int]
    removed: list[int]
    injected: list[int]


def grey_levels(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 grey ``0.30 R + 0.59 G + 0.11 B`` of an (H, W, 3) uint8 image, in grey levels."""
    return rgb.astype(np.float32) @ GREY


def recover_colour(rgb: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """The paper's ratio colour recovery of a modified grey image, as (H, W, 3) uint8.

    Each channel is multiplied by ``grey / grey_levels(rgb)``; black pixels take the modified grey
    in all channels, and channels pushed past 255 saturate (only there the hue changes).
    """
    original = grey_levels(rgb)
    alpha = np.divide(grey, original, out=np.zeros_like(original), where=original > 0)
    out = rgb * alpha[..., None]
    out[original <= 0] = grey[original <= 0, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def match(a: Keypoints, b: Keypoints) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks: which keypoints of ``a`` have a close one in ``b``, and which of ``b`` in ``a``.

    Close: within ``max(1, MATCH_DISTANCE * sigma_a)`` pixels and ``MATCH_OCTAVES`` of scale.
    """
    in_a, in_b = np.zeros(len(a), bool), np.zeros(len(b), bool)
    if len(a) and len(b):
        radius = np.maximum(1.0, MATCH_DISTANCE * a.sigma)
        pairs = cKDTree(a.xy).sparse_distance_matrix(cKDTree(b.xy), radius.max(), output_type="ndarray")
        i, j = pairs["i"], pairs["j"]
        ok = (pairs["v"] <= radius[i]) & (np.abs(np.log2(b.sigma[j] / a.sigma[i])) <= MATCH_OCTAVES)
        in_a[i[ok]], in_b[j[ok]] = True, True
    return in_a, in_b


# ------------------------------------------------------------------------------ scale space


def _bins(sigma: np.ndarray):
    """Yield (bin scale, indices) for scales grouped into bins 1/BINS_PER_OCTAVE octave wide."""
    bins = np.round(BINS_PER_OCTAVE * np.log2(sigma)).astype(int)
    for b in np.unique(bins):
        yield 2.0 ** (b / BINS_PER_OCTAVE), np.flatnonzero(bins == b)


def _level(shape: tuple[int, int], sigma: float) -> tuple[tuple[int, int], float]:
    """Shape of the octave a scale is processed at (halved until sigma < 3.2 there) and sigma in its pixels."""
    factor = 2 ** max(0, int(np.floor(np.log2(sigma / 1.6))))
    return (max(1, round(shape[0] / factor)), max(1, round(shape[1] / factor))), sigma / factor


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if img.shape == shape:
        return img
    smaller = shape[0] < img.shape[0]
    return cv2.resize(img, shape[::-1], interpolation=cv2.INTER_AREA if smaller else cv2.INTER_LINEAR)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur to scale ``sigma``, applied on top of the input blur SIFT assumes."""
    return cv2.GaussianBlur(img, (0, 0), np.sqrt(max(sigma * sigma - INPUT_BLUR ** 2, 1e-2)),
                            borderType=cv2.BORDER_REFLECT)


def _dogs(img: np.ndarray, sigmas: list[float]) -> list[np.ndarray]:
    """DoG maps ``G(k sigma) * img - G(sigma) * img`` of one image, every distinct blur computed once."""
    blurs: dict[float, np.ndarray] = {}
    for scale in {round(m * s, 6) for s in sigmas for m in (1, K)}:
        blurs[scale] = _blur(img, scale)
    return [blurs[round(K * s, 6)] - blurs[round(s, 6)] for s in sigmas]


def _dog_sum(images: list[np.ndarray], sigmas: list[float]) -> np.ndarray:
    """``sum_j DoG_sigma_j(images_j)`` (the adjoint of reading with :func:`_dogs`), one blur per distinct scale."""
    terms: dict[float, np.ndarray] = {}
    for img, s in zip(images, sigmas):
        for scale, sign in ((round(K * s, 6), 1), (round(s, 6), -1)):
            terms[scale] = terms.get(scale, 0) + sign * img
    return sum(_blur(img, scale) for scale, img in terms.items())


def _corners(xy: np.ndarray, full: tuple[int, int], shape: tuple[int, int]):
    """Bilinear interpolation at full-resolution points on a level: (K, 4) rows, columns and weights."""
    p = (xy + 0.5) * (np.array(shape[::-1]) / np.array(full[::-1])) - 0.5
    p0 = np.floor(p)
    fx, fy = (p - p0).T
    cols = np.clip(p0[:, :1].astype(int) + [0, 1, 0, 1], 0, shape[1] - 1)
    rows = np.clip(p0[:, 1:].astype(int) + [0, 0, 1, 1], 0, shape[0] - 1)
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    return rows, cols, weights.astype(np.float32)


@lru_cache(maxsize=512)
def _gram(sigma: float, ratios: tuple[float, ...]) -> np.ndarray:
    """(n, n, 4, 4) inner products of the DoG kernels at scales ``sigma * ratios`` at the four bilinear corners."""
    r = int(np.ceil(4 * K * sigma * max(ratios))) + 2
    impulse = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    impulse[r, r] = 1
    kernels = [k.astype(np.float64) for k in _dogs(impulse, [sigma * q for q in ratios])]
    offsets = [(0, 0), (1, 0), (0, 1), (1, 1)]  # (dx, dy), the order of _corners
    gram = np.empty((len(ratios), len(ratios), 4, 4))
    for j, kj in enumerate(kernels):
        for m, km in enumerate(kernels):
            for a, (xa, ya) in enumerate(offsets):
                for b, (xb, yb) in enumerate(offsets):
                    gram[j, m, a, b] = (kj * np.roll(km, (yb - ya, xb - xa), axis=(0, 1))).sum()
    return gram


def _push(current: np.ndarray, grey: np.ndarray, points: Keypoints, goal: Callable[[np.ndarray], np.ndarray],
          ratios: tuple[float, ...] = (1.0,)) -> None:
    """Add to ``grey`` the least-norm patches that move the DoG values of ``current`` at ``points`` to ``goal(D)``.

    ``D`` (K, n) holds the values at each point's position and the scales ``sigma * ratios``:
    ``D = W current`` with W the rows of DoG kernels (bilinearly interpolated), so the least-norm
    patch is ``W^T (W W^T)^-1 (goal(D) - D)``, one n x n system per point. The points of a scale bin
    get their patches together: coefficients splatted, then filtered with the DoG (the adjoint of the read).
    """
    full, levels = current.shape, {}
    for sigma, idx in _bins(points.sigma):
        shape, s = _level(full, sigma)
        if shape not in levels:
            levels[shape] = _resize(current, shape)
        rows, cols, weights = _corners(points.xy[idx], full, shape)
        scales = [s * q for q in ratios]
        d = np.stack([(m[rows, cols] * weights).sum(axis=1) for m in _dogs(levels[shape], scales)], axis=1)
        gram = np.einsum("ka,jmab,kb->kjm", weights, _gram(s, ratios), weights)
        coefficients = np.linalg.solve(gram, (goal(d) - d)[..., None])[..., 0]
        splats = [np.zeros(shape, np.float32) for _ in ratios]
        for splat, c in zip(splats, coefficients.T):
            np.add.at(splat, (rows, cols), c[:, None] * weights)
        grey += _resize(_dog_sum(splats, scales), full)


# ------------------------------------------------------------------------------ the attack


class KeypointAttack(ImageAttack):
    """SIFT keypoint removal and/or injection on the grey image, colour recovered by ratio.

    Methods (Do et al. 2010, as the PIRE paper uses them; steps of a combination run in order):

    - ``rmd``: every detected keypoint gets the least-L2 DoG-shaped patch that brings its DoG value
      to ``(1 - margin)`` times the contrast threshold, below which SIFT drops it. Pushing it just
      below one neighbour instead (no longer an extremum) would be cheaper but only moves the
      extremum by one sample, so the keypoint survives nearby.
    - ``ls``: the neighbourhood of every keypoint is replaced by its Gaussian blur
      (``ls_blur * sigma``), blended in with a Gaussian window of ``ls_window * sigma``.
    - ``fmd``: ``inject`` new keypoints per original one, at the flattest places (smallest |D|) of a
      grid at least 3 sigma away from every keypoint, with scales spread like the original ones
      (at most ``max_inject_sigma``); each gets the least-L2 patch that sets |D| to ``(1 + margin)``
      times the threshold at its scale and to :data:`PEAK` times that at the neighbouring scales
      ``sigma / k`` and ``k sigma`` (the goal rises in later rounds for sites still undetected).

    Each step runs up to ``rounds`` rounds of detect-and-modify on the current 8-bit output: RMD
    and LS act on every keypoint detected, including those an earlier round moved (a flattened
    blob often reappears at another scale) or created; FMD re-pushes its sites not detected yet.
    Where a photo has no room left, fewer keypoints are injected. Deterministic.

    Args:
        method: one of :data:`METHODS`.
        rounds: detect-and-modify rounds per step.
        margin: distance of the RMD and FMD goals from the contrast threshold, as a fraction of it.
        ls_blur, ls_window: LS blur and window, in multiples of the keypoint scale.
        inject: FMD keypoints per original keypoint.
        max_inject_sigma: largest scale of an injected keypoint, in pixels.
        contrast_threshold, edge_threshold: the SIFT detector's (OpenCV defaults).

    Shape:
        input (N, 3, H, W) float in [0, 1]; output the same shape, on the 8-bit grid. ``stats``
        (:class:`KeypointStats`) compares the detections on the input and on the output with
        :func:`match`: removed are original keypoints without a close one after, injected are
        keypoints after without a close original one.
    """

    stats_type = KeypointStats

    def __init__(self, method: str = "rmd", rounds: int = 3, margin: float = 0.1, ls_blur: float = 1.0,
                 ls_window: float = 1.0, inject: float = 0.25, max_inject_sigma: float = 4.0,
                 contrast_threshold: float = 0.04, edge_threshold: float = 10.0):
        _check(method in METHODS, f"method must be one of {', '.join(METHODS)}; got {method!r}")
        _check(isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 1,
              f"rounds must be a positive integer, got {rounds!r}")
        _check(0 < margin < 1, f"margin must be in (0, 1), got {margin}")
        _check(ls_blur > 0 and ls_window > 0, f"ls_blur and ls_window must be positive, got {ls_blur}, {ls_window}")
        _check(inject > 0, f"inject must be positive, got {inject}")
        _check(max_inject_sigma >= 1, f"max_inject_sigma must be at least 1 pixel, got {max_inject_sigma}")
        _check(0 < contrast_threshold < 1, f"contrast_threshold must be in (0, 1), got {contrast_threshold}")
        _check(edge_threshold > 1, f"edge_threshold must be greater than 1, got {edge_threshold}")
        self.method, self.rounds, self.margin, self.ls_blur, self.ls_window = method, rounds, margin, ls_blur, ls_window
        self.inject, self.max_inject_sigma = inject, max_inject_sigma
        self.threshold = contrast_threshold * 255 / LAYERS  # |D| in grey levels below which SIFT drops a keypoint
        self._sift = cv2.SIFT_create(contrastThreshold=contrast_threshold, edgeThreshold=edge_threshold)
        self._detected: dict[tuple, Keypoints] = {}
        super().__init__()

    def detect(self, grey: np.ndarray) -> Keypoints:
        """SIFT keypoints of a grey image (rounded to 8 bit), one per position and scale.

        The last two results are kept: a step's first round sees the image the previous step (or
        the original detection) ended with, and :meth:`compare` usually sees both again.
        """
        image = np.clip(np.round(grey), 0, 255).astype(np.uint8)
        key = (image.shape, image.tobytes())
        if key not in self._detected:
            found = self._sift.detect(image, None)
            rows = np.unique(np.array([(k.pt[0], k.pt[1], k.size / 2) for k in found]).reshape(-1, 3), axis=0)
            self._detected = {**dict(list(self._detected.items())[-1:]), key: Keypoints(rows[:, :2], rows[:, 2])}
        return self._detected[key]

    def compare(self, original: np.ndarray, modified: np.ndarray) -> dict[str, int]:
        """Keypoints of two (H, W, 3) uint8 photos: ``before``, ``after``, ``removed``, ``injected``."""
        return self._change(self.detect(grey_levels(original)), self.detect(grey_levels(modified)))

    @staticmethod
    def _change(before: Keypoints, after: Keypoints) -> dict[str, int]:
        kept, old = match(before, after)
        return {"before": len(before), "after": len(after), "removed": int((~kept).sum()),
                "injected": int((~old).sum())}

    def attack_one(self, rgb: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        grey = grey_levels(rgb)
        original = self.detect(grey)
        for step in self.method.split("+"):
            if step == "fmd":
                self._inject(rgb, grey, original)
            else:
                self._rounds(rgb, grey, self._remove if step == "rmd" else self._smooth)
        out = recover_colour(rgb, grey)
        return out, self._change(original, self.detect(grey_levels(out)))

    def _rounds(self, rgb: np.ndarray, grey: np.ndarray, act: Callable[[np.ndarray, np.ndarray, Keypoints, int], None],
                select: Callable[[np.ndarray, Keypoints], Keypoints] = lambda current, found: found) -> None:
        """Up to ``rounds`` times: detect on the current 8-bit output, ``select`` (default: all), ``act``."""
        for r in range(self.rounds):
            current = grey_levels(recover_colour(rgb, grey))
            todo = select(current, self.detect(current))
            if not len(todo):
                return
            act(current, grey, todo, r)

    def _remove(self, current: np.ndarray, grey: np.ndarray, found: Keypoints, _: int) -> None:
        goal = self.threshold * (1 - self.margin)
        _push(current, grey, found, lambda d: np.clip(d, -goal, goal))

    def _smooth(self, current: np.ndarray, grey: np.ndarray, found: Keypoints, _: int) -> None:
        full = grey.shape
        for sigma, idx in _bins(found.sigma):
            shape, s = _level(full, sigma)
            rows, cols, weights = _corners(found.xy[idx], full, shape)
            window = np.zeros(shape, np.float32)
            np.add.at(window, (rows, cols), weights)
            w = self.ls_window * s
            window = np.minimum(1, cv2.GaussianBlur(window, (0, 0), w) * (2 * np.pi * w * w))  # peak 1
            low = _resize(grey, shape)
            grey += _resize(window * (cv2.GaussianBlur(low, (0, 0), self.ls_blur * s) - low), full)

    def _inject(self, rgb: np.ndarray, grey: np.ndarray, original: Keypoints) -> None:
        sites: list[Keypoints] = []

        def select(current, found):  # the sites (chosen in the first round) not detected yet
            if not sites:
                sites.append(self._sites(current, found, original))
            return sites[0][~match(sites[0], found)[0]]

        def act(current, g, todo, r):
            def goal(d):  # d: the scales sigma / k, sigma, k sigma
                t = self.threshold * (1 + self.margin * (r + 1))
                return (np.where(d[:, 1] < 0, -1, 1) * np.maximum(np.abs(d[:, 1]), t))[:, None] * [PEAK, 1, PEAK]
            _push(current, g, todo, goal, (1 / K, 1.0, K))
        self._rounds(rgb, grey, act, select)

    def _sites(self, current: np.ndarray, found: Keypoints, original: Keypoints) -> Keypoints:
        """Where to forge keypoints: flattest grid points at least 3 sigma from every keypoint, largest scales first."""
        n = round(self.inject * len(original))
        if n == 0:
            return Keypoints(np.zeros((0, 2)), np.zeros(0))
        scales = np.quantile(np.clip(original.sigma, MIN_SIGMA, self.max_inject_sigma), (np.arange(n) + 0.5) / n)
        full, occupied = current.shape, [found.xy]
        xy, sigmas = [], []
        for sigma, idx in sorted(_bins(scales), key=lambda b: -b[0]):
            shape, s = _level(full, sigma)
            step = max(1, round(4 * s))
            gy, gx = np.mgrid[step // 2:shape[0]:step, step // 2:shape[1]:step].reshape(2, -1)
            grid = (np.stack([gx, gy], axis=1) + 0.5) * (np.array(full[::-1]) / np.array(shape[::-1])) - 0.5
            inside = np.all((grid >= 3 * sigma) & (grid <= np.array(full[::-1]) - 1 - 3 * sigma), axis=1)
            taken = np.concatenate(occupied)
            if len(taken):
                inside &= cKDTree(taken).query(grid)[0] >= 3 * sigma
            flat = np.abs(_dogs(_resize(current, shape), [s])[0][gy, gx])
            chosen = np.flatnonzero(inside)[np.argsort(flat[inside], kind="stable")[:len(idx)]]
            xy.append(grid[chosen])
            sigmas.append(np.full(len(chosen), sigma))
            occupied.append(grid[chosen])
        return Keypoints(np.concatenate(xy), np.concatenate(sigmas))
