"""The retrieval descriptor: pixel normalisation, CNN trunk, GeM, L2, optional whitening."""
from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .pooling import GeM, Whitening, l2n, mac, rmac, spoc
from .precision import float32_context


POOLINGS = {"gem": None, "mac": mac, "spoc": spoc, "rmac": rmac}  # gem: the model's own GeM layer


class DescriptorModel(nn.Module):
    """Maps RGB images in [0, 1] to L2-normalised global descriptors.

    Mean/std normalisation happens here, never in the caller, so attacks and quality budgets
    work in plain pixel space. Under ``torch.autocast`` only the trunk runs in reduced precision:
    pooling, whitening and the descriptor are float32.

    Args:
        features: trunk mapping normalised (N, 3, H, W) to non-negative (N, C, h, w) activations.
        mean, std: per-channel normalisation applied to the [0, 1] input.
        name: identifier recorded in indexes and reports (built-in name or checkpoint id).
        whiten: optional learned linear layer after GeM (cirtorch ``whiten``), followed by L2.
        learned_whitening: optional ``{'ss': Whitening, 'ms': Whitening}`` (cirtorch ``meta['Lw']``)
            applied to single- or multi-scale descriptors.
        gem_p: initial GeM exponent.

    Shape:
        input (N, 3, H, W) float in [0, 1]; output (N, D), unit L2 norm per row.
    """

    def __init__(self, features: nn.Module, mean: Sequence[float], std: Sequence[float], name: str,
                 whiten: nn.Linear | None = None, learned_whitening: dict[str, Whitening] | None = None,
                 gem_p: float = 3.0):
        super().__init__()
        self.features = features
        self.pool = GeM(p=gem_p)
        self.whiten = whiten
        self.learned_whitening = nn.ModuleDict(learned_whitening or {})
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.name = name

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk activations (N, C, h, w) of (N, 3, H, W) images in [0, 1]."""
        return self.features(((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last))

    def pool_map(self, fmap: torch.Tensor, pooling: str = "gem") -> torch.Tensor:
        """Descriptor of a feature map (or a region of one), before learned whitening; float32.

        ``pooling``: ``gem`` (the model's own, with its exponent), ``mac``, ``spoc`` or ``rmac``.
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        with float32_context(fmap.device):
            fmap = fmap.float()
            v = l2n(self.pool(fmap) if pooling == "gem" else POOLINGS[pooling](fmap))
            return v if self.whiten is None else l2n(self.whiten(v))

    def single_scale(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptor of (N, 3, H, W) images at their given resolution, before learned whitening."""
        return self.pool_map(self.feature_map(x))

    def combine_scales(self, descriptors: Sequence[torch.Tensor]) -> torch.Tensor:
        """One descriptor from the (N, D) descriptors of several scales, as cirtorch combines them: GeM over
        the scales with the pooling exponent for non-negative descriptors, else their mean; then L2."""
        vs = torch.stack(list(descriptors))
        if self.whiten is None:
            p = self.pool.p.detach()
            return l2n(vs.clamp(min=1e-6).pow(p).mean(0).pow(1.0 / p))
        return l2n(vs.mean(0))

    def forward(self, x: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
        """Descriptor of (N, 3, H, W) images in [0, 1]; several ``scales`` are GeM-averaged as cirtorch does."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images in [0, 1], got shape {tuple(x.shape)}")
        if tuple(scales) == (1.0,):
            v = self.single_scale(x)
        else:
            v = self.combine_scales([self.single_scale(x if s == 1 else F.interpolate(
                x, scale_factor=s, mode="bilinear", align_corners=False, antialias=True)) for s in scales])
        key = "ss" if len(scales) == 1 else "ms"
        if key in self.learned_whitening:
            with float32_context(v.device):
                v = self.learned_whitening[key](v)
        return v
