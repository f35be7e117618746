"""Additive Gaussian noise: the PIRE paper's baseline (Table 8), matched to the SSIM of an attack."""
from dataclasses import dataclass

import numpy as np

from ..io import to_tensor
from ..perceptual import monochrome
from ..quality import ssim
from .base import ImageAttack, _check

STD_RANGE = (0.05 / 255, 1.0)  # searched standard deviations, [0, 1] pixel units


@dataclass
class NoiseStats:
    """Per image of the last call: the noise standard deviation used ([0, 1] units) and the SSIM reached."""

    std: list[float]
    ssim: list[float]


class GaussianNoise(ImageAttack):
    """Add ``N(0, std^2)`` noise per pixel and channel, clip to [0, 1] and round to 8 bit; a black-and-white photo
    (:func:`~advquery.perceptual.monochrome`) gets the same noise in its three channels, so it stays grey.

    Give either ``std`` or ``target_ssim``. With ``target_ssim`` the std is found per photo by
    bisection (on log std, within :data:`STD_RANGE`) until the SSIM of the 8-bit result against
    the input (:func:`advquery.quality.ssim`) is within ``tolerance`` of the target; one noise
    field is drawn per photo and only scaled, so SSIM falls with std. A target not reached within
    ``max_iterations`` (or outside the range) gives the closest result found; ``stats`` tells the
    std used and the SSIM reached.

    Args:
        std: noise standard deviation in [0, 1] pixel units (e.g. ``2 / 255``).
        target_ssim: SSIM to match, in (0, 1).
        seed: seed of the noise (None: nondeterministic); photos of a batch get different noise.
        tolerance: accepted SSIM difference from the target.
        max_iterations: bisection steps at most.
    """

    stats_type = NoiseStats

    def __init__(self, std: float | None = None, target_ssim: float | None = None, seed: int | None = None,
                 tolerance: float = 0.002, max_iterations: int = 30):
        _check((std is None) != (target_ssim is None), "give either std or target_ssim")
        _check(std is None or 0 < std <= 1, f"std must be in (0, 1] (pixel units; 2 grey levels = 2 / 255), got {std}")
        _check(target_ssim is None or 0 < target_ssim < 1, f"target_ssim must be in (0, 1), got {target_ssim}")
        _check(0 < tolerance < 1, f"tolerance must be in (0, 1), got {tolerance}")
        _check(isinstance(max_iterations, int) and not isinstance(max_iterations, bool) and max_iterations >= 1,
               f"max_iterations must be a positive integer, got {max_iterations!r}")
        self.std, self.target_ssim, self.seed = std, target_ssim, seed
        self.tolerance, self.max_iterations = tolerance, max_iterations
        self._rng = np.random.default_rng(seed)
        super().__init__()

    def __call__(self, images):
        self._rng = np.random.default_rng(self.seed)  # the same seed gives the same output on every call
        return super().__call__(images)

    def attack_one(self, rgb: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        channels = 1 if bool(monochrome(to_tensor(rgb))[0]) else 3
        noise = self._rng.standard_normal((*rgb.shape[:2], channels), dtype=np.float32) * 255

        def noisy(std: float) -> tuple[np.ndarray, float]:
            out = np.clip(np.round(rgb + std * noise), 0, 255).astype(np.uint8)
            return out, ssim(rgb, out)

        if self.std is not None:
            out, reached = noisy(self.std)
            return out, {"std": self.std, "ssim": reached}
        lo, hi = np.log(STD_RANGE[0]), np.log(STD_RANGE[1])
        best = None
        for _ in range(self.max_iterations):
            std = float(np.exp((lo + hi) / 2))
            out, reached = noisy(std)
            if best is None or abs(reached - self.target_ssim) < abs(best[2] - self.target_ssim):
                best = out, std, reached
            if abs(reached - self.target_ssim) <= self.tolerance:
                break
            lo, hi = (np.log(std), hi) if reached > self.target_ssim else (lo, np.log(std))
        out, std, reached = best
        return out, {"std": std, "ssim": reached}
