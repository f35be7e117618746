"""CV-PIRE and SD-PIRE (Sweere, 2019): PIRE with a per-pixel budget from a perceptual map.

The budget ``pT = map * m / 255`` spends the perturbation where colours vary (texture, edges),
where a change is hard to see, and saves it in flat regions (sky, walls). The map is computed
on the photo at the perturbation's (working) resolution.
"""
import torch

from ..perceptual import check_map_parameters, color_variance_map, std_map
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
