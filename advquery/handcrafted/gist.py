"""GIST, the spatial-envelope descriptor, and the L2 distance it is compared with.

A. Oliva and A. Torralba, "Modeling the Shape of the Scene: A Holistic Representation of the Spatial
Envelope", IJCV 42(3), 2001. Follows the authors' reference code ``LMgist.m`` (LabelMe toolbox):
grey level, resize-and-crop to a square, prefiltering (log, whitening with an fc = 4 cycles/image
Gaussian, local contrast normalisation), a bank of Gabor-like transfer functions in the frequency
domain (``createGabor``), and the filter output magnitude averaged over a grid of blocks.

Layout of the ``scales * orientations * grid**2`` values, as LMgist's: scale-major (scale 0 is the
finest, peak 0.3 cycles/pixel, each next one 1.85 times lower), then orientation (orientation k
passes frequencies at angle ``-k pi / orientations`` from the horizontal frequency axis, so 0 responds to
vertical structure and ``orientations / 2`` to horizontal), then the grid blocks in column-major
order (LMgist's MATLAB ``reshape``): ``vector.reshape(scales, orientations, grid_column, grid_row)``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import fft

from ..io import _check_rgb
from .cedd import _query_and_rows

__all__ = ["gist", "l2_distances"]

BOUNDARY_EXTENSION = 32  # LMgist pads by 32 pixels (symmetric) before the Gabor filtering
PREFILTER_FC = 4.0  # cycles per image of the whitening / contrast-normalisation Gaussian
_PREFILTER_PAD = 5


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _resize_crop(grey: np.ndarray, size: int) -> np.ndarray:
    """LMgist's ``imresizecrop``: scale so that the image covers ``size x size`` (bilinear with
    antialiasing, as MATLAB's ``imresize``), then keep the centre."""
    h, w = grey.shape
    scale = max(size / h, size / w)
    nh, nw = (int(np.floor(n * scale + 0.5)) for n in (h, w))  # MATLAB's round
    out = np.asarray(Image.fromarray(grey.astype(np.float32)).resize((nw, nh), Image.Resampling.BILINEAR))
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[top:top + size, left:left + size].astype(float)


def _gaussian(n: int, fc: float) -> np.ndarray:
    f = fft.fftfreq(n, 1.0 / n)  # cycles per image, in FFT order
    return np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (fc ** 2 / np.log(2)))


def _prefilter(img: np.ndarray, fc: float = PREFILTER_FC) -> np.ndarray:
    """LMgist's ``prefilt``: whitening and local contrast normalisation of ``log(1 + img)``."""
    w = _PREFILTER_PAD
    x = np.pad(np.log1p(img), w, mode="symmetric")
    sn, sm = x.shape
    n = max(sn, sm) + max(sn, sm) % 2
    x = np.pad(x, ((0, n - sn), (0, n - sm)), mode="symmetric")
    gf = _gaussian(n, fc)
    out = x - fft.ifft2(fft.fft2(x) * gf).real
    local_std = np.sqrt(np.abs(fft.ifft2(fft.fft2(out ** 2) * gf)))
    return (out / (0.2 + local_std))[w:sn - w, w:sm - w]


@lru_cache(maxsize=4)
def _gabor_bank(n: int, scales: int, orientations: int) -> np.ndarray:
    """LMgist's ``createGabor([orientations] * scales, n)``: (scales, orientations, n, n) float32
    transfer functions in FFT order: Gaussians in radial frequency around each scale's peak and in
    angle around each orientation."""
    f = fft.fftfreq(n, 1.0 / n)
    radius = np.hypot(f[None, :], f[:, None]) / n  # cycles per pixel
    angle = np.arctan2(f[:, None], f[None, :])
    peak = 0.3 / 1.85 ** np.arange(scales)[:, None, None, None]
    theta = angle + np.pi / orientations * np.arange(orientations)[:, None, None]
    theta = np.where(theta > np.pi, theta - 2 * np.pi, theta)
    bandwidth = 16 * orientations ** 2 / 32 ** 2
    bank = np.exp(-10 * 0.35 * (radius / peak - 1) ** 2 - 2 * bandwidth * np.pi * theta ** 2)
    bank = bank.astype(np.float32)
    bank.flags.writeable = False
    return bank


def gist(rgb: np.ndarray, image_size: int = 256, scales: int = 4, orientations: int = 8,
         grid: int = 4) -> np.ndarray:
    """GIST of an ``(H, W, 3) uint8`` RGB image: ``(scales * orientations * grid**2,) float32``
    (512 with the defaults, those of LMgist's demo: 256 pixels, ``[8 8 8 8]`` orientations, 4 x 4).

    Steps as LMgist: mean of the three channels; resize so the image covers ``image_size`` pixels
    square and crop the centre (aspect ratio kept, as LMgist's ``imresizecrop``, not warped);
    stretch grey levels to [0, 255]; prefilter; filter with each transfer function on the image
    padded by 32 pixels (symmetric), take the magnitude and average it over a ``grid x grid``
    division of the unpadded image. The filtering runs in single precision, as in LMgist.

    Choices: a constant image cannot be stretched (LMgist divides 0 by 0 and returns NaN); it is
    kept at 0, so its descriptor is all zeros. For an odd ``image_size`` the filters are sampled at
    the exact DFT frequencies, where LMgist's ``meshgrid(-n/2:n/2-1)`` is half a sample off (the
    default, even sizes give identical grids).
    """
    _check_rgb(rgb)
    image_size, scales, orientations, grid = (
        _positive_int(name, value) for name, value in
        (("image_size", image_size), ("scales", scales), ("orientations", orientations), ("grid", grid)))
    if grid > image_size:
        raise ValueError(f"grid ({grid}) must not exceed image_size ({image_size})")

    img = _resize_crop(rgb.mean(axis=2), image_size)
    img -= img.min()
    if img.max() > 0:
        img *= 255 / img.max()
    x = np.pad(_prefilter(img), BOUNDARY_EXTENSION, mode="symmetric")
    bank = _gabor_bank(x.shape[0], scales, orientations)
    spectrum = fft.fft2(x.astype(np.float32))
    inside = slice(BOUNDARY_EXTENSION, BOUNDARY_EXTENSION + image_size)
    energy = np.abs(fft.ifft2(spectrum * bank, axes=(-2, -1)))[..., inside, inside]

    edges = np.linspace(0, image_size, grid + 1).astype(int)  # LMgist's downN
    sums = np.add.reduceat(np.add.reduceat(energy, edges[:-1], axis=-2), edges[:-1], axis=-1)
    means = sums / np.outer(np.diff(edges), np.diff(edges))
    return means.swapaxes(-1, -2).reshape(-1).astype(np.float32)


def l2_distances(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Euclidean distances from a (D,) query to each of (n, D) rows (smaller = more similar), the
    comparison GIST descriptors are used with."""
    q, db = _query_and_rows(query, database)
    return np.sqrt(np.einsum("ij,ij->i", db - q, db - q))
