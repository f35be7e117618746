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
        steps, lr, ...: see :class:`~advquery.attacks.base.PerturbationAttack`; ``lr`` defaults to ``eps`` (chosen over eps/4 at 30 steps).

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


class SSIMPIRE(PIRE):
    """PIRE that pays for its perturbation in SSIM: ``||f(x) - f(x + v)||^2 - ssim_weight * (1 - SSIM)``.

    The bound ``eps`` only caps the change; within it, the SSIM term leaves pixels alone where a
    change would cost more SSIM (flat regions, whose window variance is small) than it moves the
    descriptor, and spends the bound in texture. Its quality-effect curve against PIRE's and the thesis
    methods' is in ``bench/results/perceptual_methods_limit20_operating_point.md`` (docs/benchmarks.md).

    Args:
        model: descriptor model.
        eps: L-infinity bound in [0, 1] pixel units (default 3 grey levels).
        ssim_weight: price of SSIM in descriptor distance; more: higher SSIM, less effect
            (see :class:`~advquery.attacks.base.PerturbationAttack`).
        steps, lr, ...: as :class:`PIRE`; a random start is needed (at zero the gradient vanishes).

    Example:
        >>> import torch
        >>> from advquery import load_model, SSIMPIRE
        >>> attack = SSIMPIRE(load_model(device="cpu"), steps=2, size=64, seed=0)
        >>> x = torch.rand(1, 3, 48, 64).mul(255).round().div(255)
        >>> bool((attack(x) - x).abs().max() <= 3 / 255 + 1e-6)
        True
    """

    def __init__(self, model, eps: float = 3 / 255, ssim_weight: float = 300.0, steps: int = 100, **kwargs):
        if ssim_weight <= 0:
            raise ValueError(f"ssim_weight must be positive (0 is PIRE), got {ssim_weight}")
        super().__init__(model, eps=eps, steps=steps, ssim_weight=ssim_weight, **kwargs)
