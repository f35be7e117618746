"""PIRE: Perturbations for Image Retrieval Error (Liu, Zhao and Larson, ICMR 2019)."""
import torch

from .base import PerturbationAttack


class PIRE(PerturbationAttack):
    """Untargeted, unsupervised attack on a retrieval descriptor under an L-infinity budget.

    Maximises ``||f(x) - f(x + v)||^2`` subject to ``||v||_inf <= eps`` and ``x + v`` in [0, 1],
    in pixel space (normalisation stays inside the model), with Adam.

    Args:
        model: descriptor model.
        eps: L-infinity budget in [0, 1] pixel units (e.g. ``2 / 255`` for two grey levels).
        steps, lr, ...: see :class:`~advquery.attacks.base.PerturbationAttack`; ``lr`` defaults to ``eps`` (measured best of eps/4 and eps at 30 steps).

    Example:
        >>> import torch
        >>> from advquery import load_model, PIRE
        >>> attack = PIRE(load_model(device="cpu"), eps=2 / 255, steps=2, size=64, seed=0)
        >>> x = torch.rand(1, 3, 48, 64).mul(255).round().div(255)
        >>> x_adv = attack(x)
        >>> bool((x_adv - x).abs().max() <= 2 / 255 + 1e-6)
        True
    """

    def __init__(self, model, eps: float = 4 / 255, steps: int = 100, lr: float | None = None, **kwargs):
        if not 0 < eps <= 1:
            raise ValueError(f"eps must be in (0, 1] (pixel units; 4 grey levels = 4 / 255), got {eps}")
        super().__init__(model, steps=steps, lr=eps if lr is None else lr, **kwargs)
        self.eps = eps

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((1, 1, 1, 1), self.eps, device=x.device, dtype=x.dtype)
