"""Image quality of a modified photo against its original.

All functions take the two decoded files as ``(H, W, 3) uint8`` arrays (grey levels 0-255)
and return Python floats. The definitions are the honest ones of METHODS.md, Evaluation:
``data_range`` is 255 (never skimage's 2.0 default for float images), SSIM uses the Gaussian
window of Wang et al. (sigma 1.5) and is averaged over the R, G, B channels.

Large photos are processed in horizontal bands, so memory stays bounded (about 100 MB a measure) on a
12-megapixel image; results do not depend on the band size.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage
from skimage.color import deltaE_ciede2000, rgb2lab

__all__ = ["amplified_difference", "flat_changed", "flat_pixels", "linf", "mean_abs_change", "mean_ciede2000", "psnr",
           "quality_report", "ssim"]

DATA_RANGE = 255.0
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # as skimage: an 11 x 11 window for sigma 1.5
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5; also the border skimage crops
SSIM_K1, SSIM_K2 = 0.01, 0.03
_BAND_PIXELS = 1 << 20  # pixels per band (per channel) in ssim and mean_ciede2000
FLAT_WINDOW, FLAT_STD, FLAT_CHANGE = 7, 2.0, 1  # flat: 7 x 7 luminance std below 2 levels; changed: by more than 1
_BT709 = (0.2126, 0.7152, 0.0722)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, x in (("a", a), ("b", b)):
        if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3):
            got = f"{x.shape} {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"expected {name} as a (H, W, 3) uint8 array, got {got}")
    if a.shape != b.shape:
        raise ValueError(f"expected images of equal shape, got {a.shape} and {b.shape}")


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.subtract(a, b, dtype=np.int16))


def _bands(height: int, width: int, halo: int = 0):
    """Yield ``(lo, hi, start, stop)``: output rows [lo, hi) read from rows [start, stop) with a halo."""
    rows = max(16, _BAND_PIXELS // max(width, 1))
    for lo in range(0, height, rows):
        hi = min(lo + rows, height)
        yield lo, hi, max(lo - halo, 0), min(hi + halo, height)


def _gauss(x: np.ndarray) -> np.ndarray:
    # Channels first; sigma 0 leaves the channel axis alone. 'reflect' = skimage's mode.
    return ndimage.gaussian_filter(x, (0, SSIM_SIGMA, SSIM_SIGMA), mode="reflect", truncate=SSIM_TRUNCATE)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity, in [-1, 1] (1: identical).

    Gaussian window sigma 1.5 (11 x 11), data_range 255, K1 0.01, K2 0.03, population
    covariance, a border of 5 pixels left out of the mean, mean over R, G, B. Equals
    ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=2, data_range=255)``.

    Raises:
        ValueError: arrays not ``(H, W, 3) uint8``, shapes differ, or a side < 11 pixels.

    >>> a = np.zeros((16, 16, 3), np.uint8)
    >>> ssim(a, a)
    1.0
    """
    _check_pair(a, b)
    h, w = a.shape[:2]
    win = 2 * SSIM_RADIUS + 1
    if min(h, w) < win:
        raise ValueError(f"expected images of at least {win} x {win} pixels for SSIM, got {w} x {h}")
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    r = SSIM_RADIUS
    total = 0.0
    for lo, hi, start, stop in _bands(h, w, halo=r):
        x = a[start:stop].transpose(2, 0, 1).astype(np.float64, order="C")
        y = b[start:stop].transpose(2, 0, 1).astype(np.float64, order="C")
        ux, uy = _gauss(x), _gauss(y)
        vx = _gauss(x * x) - ux * ux
        vy = _gauss(y * y) - uy * uy
        vxy = _gauss(x * y) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        keep_lo, keep_hi = max(lo, r), min(hi, h - r)  # rows of this band inside the cropped image
        if keep_hi > keep_lo:
            total += float(s[:, keep_lo - start:keep_hi - start, r:w - r].sum(dtype=np.float64))
    return float(total / (3 * (h - 2 * r) * (w - 2 * r)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(255^2 / MSE)``; identical images give ``inf``.

    >>> a = np.zeros((4, 4, 3), np.uint8)
    >>> psnr(a, a), round(psnr(a, a + 1), 2)
    (inf, 48.13)
    """
    _check_pair(a, b)
    d = _abs_diff(a, b).astype(np.int32)
    mse = float(np.einsum("ijk,ijk->", d, d, dtype=np.int64)) / d.size
    return float("inf") if mse == 0 else float(10 * np.log10(DATA_RANGE ** 2 / mse))


def linf(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference over pixels and channels, in grey levels (0-255)."""
    _check_pair(a, b)
    return float(_abs_diff(a, b).max())


def mean_abs_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference over pixels and channels, in grey levels."""
    _check_pair(a, b)
    return float(_abs_diff(a, b).mean(dtype=np.float64))


def mean_ciede2000(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference (dE00) between two sRGB images, CIELAB with D65 white.

    About 1 is a just-noticeable difference for side-by-side colours. Uses skimage's
    ``rgb2lab`` and ``deltaE_ciede2000``.
    """
    _check_pair(a, b)
    h, w = a.shape[:2]
    total = 0.0
    for lo, hi, _, _ in _bands(h, w):
        lab_a, lab_b = rgb2lab(a[lo:hi]), rgb2lab(b[lo:hi])
        total += float(deltaE_ciede2000(lab_a, lab_b, channel_axis=-1).sum(dtype=np.float64))
    return float(total / (h * w))


def flat_pixels(a: np.ndarray) -> np.ndarray:
    """(H, W) bool: the flat pixels of an (H, W, 3) uint8 photo, where the standard deviation of its BT.709
    luminance in the 7 x 7 window around them is below 2 grey levels (sky, walls: where SSIM hides a pattern
    that the eye sees)."""
    _check_pair(a, a)
    y = a.astype(np.float64) @ np.asarray(_BT709)
    mean = ndimage.uniform_filter(y, FLAT_WINDOW, mode="reflect")
    var = ndimage.uniform_filter(y * y, FLAT_WINDOW, mode="reflect") - mean * mean
    return var < FLAT_STD ** 2


def flat_changed(a: np.ndarray, b: np.ndarray) -> float:
    """Share of ``a``'s flat pixels (:func:`flat_pixels`) that ``b`` changes by more than 1 grey level in some
    channel, in [0, 1]; 0 when ``a`` has no flat pixel.

    >>> a = np.full((16, 16, 3), 100, np.uint8); b = a.copy(); b[:4] += 2
    >>> flat_changed(a, b)
    0.25
    """
    _check_pair(a, b)
    flat = flat_pixels(a)
    if not flat.any():
        return 0.0
    return float((_abs_diff(a, b).max(axis=2) > FLAT_CHANGE)[flat].mean())


def quality_report(a: np.ndarray, b: np.ndarray, threads: int = 1) -> dict[str, float]:
    """All measures of ``b`` (modified) against ``a`` (original).

    Args:
        threads: the slow measures (SSIM, CIEDE2000, flat pixels) run side by side in up to this many threads (NumPy
            and SciPy release the GIL in their loops); the same values with any number.

    Returns:
        ``{'ssim', 'psnr' (dB, inf if identical), 'linf' (grey levels), 'mean_abs_change'
        (grey levels), 'ciede2000' (mean dE00), 'flat_changed' (:func:`flat_changed`)}`` as Python floats.
    """
    if not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"expected a positive number of threads, got {threads!r}")
    slow = {"ssim": ssim, "ciede2000": mean_ciede2000, "flat_changed": flat_changed}
    with ThreadPoolExecutor(min(threads, len(slow))) as pool:
        started = {name: pool.submit(measure, a, b) for name, measure in slow.items()}
        report = {"psnr": psnr(a, b), "linf": linf(a, b), "mean_abs_change": mean_abs_change(a, b)}
        report |= {name: future.result() for name, future in started.items()}
    return {name: report[name] for name in ("ssim", "psnr", "linf", "mean_abs_change", "ciede2000", "flat_changed")}


def amplified_difference(a: np.ndarray, b: np.ndarray, gain: float) -> np.ndarray:
    """The change from ``a`` to ``b`` made visible: ``128 + gain * (b - a)`` per channel, clipped to 0-255.

    Unchanged pixels are mid grey; brighter means the channel went up, darker down, and the
    distance from grey is the change times ``gain`` (a change of 3 grey levels at gain 10 moves a
    pixel 30 levels away from grey), so a person sees where and how much a photo was changed.

    >>> a = np.full((1, 2, 3), 100, np.uint8)
    >>> b = a.copy(); b[0, 1] = (103, 97, 100)
    >>> amplified_difference(a, b, 10)[0].tolist()
    [[128, 128, 128], [158, 98, 128]]
    """
    _check_pair(a, b)
    if not gain > 0:
        raise ValueError(f"expected a positive gain, got {gain}")
    change = np.subtract(b, a, dtype=np.float32) * gain + 128
    return np.clip(np.round(change), 0, 255).astype(np.uint8)
