"""CV-PIRE and SD-PIRE (Sweere, 2019): PIRE with a per-pixel budget from a perceptual map.

The budget ``pT = map * m / 255`` spends the perturbation where colours vary (texture, edges),
where a change is hard to see, and saves it in flat regions (sky, walls). The map is computed
on the photo at the perturbation's (working) resolution.
"""
import torch

from ..perceptual import check_map_parameters, color_variance_map, ssim_masking_map, std_map
from .base import PerturbationAttack


class _MapBudgetAttack(PerturbationAttack):
    """PIRE with ``|v| <= map(x) * m / 255`` per pixel; subclasses provide the map."""

    def __init__(self, model, m: float = 50, steps: int = 100, lr: float = 5e-2, **kwargs):
        if not 0 < m <= 255:
            raise ValueError(f"threshold multiplier m must be in (0, 255] grey levels, got {m}")
        super().__init__(model, steps=steps, lr=lr, **kwargs)
        self.m = m

    def budget_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) map in [0, 1] of where changes are least visible."""
        raise NotImplementedError

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        return self.budget_map(x) * (self.m / 255)


class CVPIRE(_MapBudgetAttack):
    """CV-PIRE: budget from the colour-variance map (thesis Algorithm 1, CIEDE2000 or CIE94).

    Args:
        m: threshold multiplier in grey levels (the largest per-pixel budget).
        n, sigma, metric: window size, Gaussian weight and colour difference of the map.
        steps, lr, ...: see :class:`~advquery.attacks.base.PerturbationAttack` (thesis: T = 100, lr 5e-2).
    """

    def __init__(self, model, m: float = 50, steps: int = 100, lr: float = 5e-2, n: int = 5, sigma: float = 1.0,
                 metric: str = "ciede2000", **kwargs):
        super().__init__(model, m=m, steps=steps, lr=lr, **kwargs)
        self.n, self.sigma, self.metric = n, sigma, metric
        check_map_parameters(n, sigma, metric)

    def budget_map(self, x: torch.Tensor) -> torch.Tensor:
        return color_variance_map(x, n=self.n, sigma=self.sigma, metric=self.metric)


class SDPIRE(_MapBudgetAttack):
    """SD-PIRE: budget from the local standard deviation of BT.709 luminance in an n x n window."""

    def __init__(self, model, m: float = 50, steps: int = 100, lr: float = 5e-2, n: int = 3, **kwargs):
        super().__init__(model, m=m, steps=steps, lr=lr, **kwargs)
        self.n = n
        check_map_parameters(n)

    def budget_map(self, x: torch.Tensor) -> torch.Tensor:
        return std_map(x, n=self.n)


class MaskedPIRE(PerturbationAttack):
    """PIRE with an SSIM-masking budget: ``eps`` in flat regions, up to ``max_gain * eps`` in texture.

    The gain (:func:`~advquery.perceptual.ssim_masking_map`) makes every pixel cost the same
    SSIM, so for the SSIM of PIRE at ``eps`` it spends several times the perturbation where the
    photo has texture and edges, and unlike the thesis maps it keeps a budget in flat regions,
    whose descriptor contribution PIRE also needs.

    Args:
        eps: budget in flat regions, in [0, 1] pixel units (1 grey level = 1 / 255).
        max_gain: cap on the texture gain (>= 1; 1 gives PIRE).
        steps, lr, ...: see :class:`~advquery.attacks.base.PerturbationAttack`; ``lr`` defaults to ``eps``.
    """

    def __init__(self, model, eps: float = 2 / 255, max_gain: float = 4.0, steps: int = 100,
                 lr: float | None = None, **kwargs):
        if not 0 < eps <= 1:
            raise ValueError(f"eps must be in (0, 1] (pixel units; 2 grey levels = 2 / 255), got {eps}")
        if max_gain < 1:
            raise ValueError(f"max_gain must be >= 1, got {max_gain}")
        super().__init__(model, steps=steps, lr=eps if lr is None else lr, **kwargs)
        self.eps, self.max_gain = eps, max_gain

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        return ssim_masking_map(x, self.max_gain) * self.eps
