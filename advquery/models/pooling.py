"""Global pooling and descriptor post-processing: GeM, MAC, SPoC, R-MAC, L2 normalisation, whitening.

The pooling functions map a (N, C, H, W) feature map to (N, C), before L2 normalisation.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F


def l2n(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise the rows of a (N, D) tensor (along dim 1: also each column of a (N, D, R) one)."""
    return x / (x.norm(p=2, dim=1, keepdim=True) + eps)


def gem(x: torch.Tensor, p: torch.Tensor | float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over H, W of a (N, C, H, W) map: (mean(clamp(x, eps)^p))^(1/p) -> (N, C). A float ``p``
    takes torch's scalar-exponent kernels, forward and backward several times quicker than a tensor's (the same
    values); a tensor ``p`` is needed only to learn it."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: the largest value of each channel."""
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features (average pooling; equal after L2 normalisation)."""
    return x.mean(dim=(-2, -1))


def rmac_regions(h: int, w: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """(top, left, side, side) of the square R-MAC regions of an h x w map (Tolias, Sicre and Jegou, ICLR 2016),
    as cirtorch lays them out: ``levels`` scales of regions with side 2 min(h, w) / (l + 1), overlapping by
    about 40 %, spread evenly, plus extra regions along the long side."""
    side = min(w, h)
    steps = torch.tensor([2, 3, 4, 5, 6, 7], dtype=torch.float64)
    b = (max(h, w) - side) / (steps - 1)
    extra = int(torch.argmin(torch.abs((side ** 2 - side * b) / side ** 2 - 0.4))) + 1  # regions along the long side
    wd, hd = (extra, 0) if h < w else (0, extra) if h > w else (0, 0)
    regions = []
    for level in range(1, levels + 1):
        wl = math.floor(2 * side / (level + 1))
        if wl == 0:
            continue
        wl2 = math.floor(wl / 2 - 1)

        def centres(n_extra: int, length: int) -> list[int]:
            step = 0 if level + n_extra == 1 else (length - wl) / (level + n_extra - 1)
            return [int(math.floor(wl2 + i * step) - wl2) for i in range(level + n_extra)]

        regions += [(top, left, wl, wl) for top in centres(hd, h) for left in centres(wd, w)]
    return regions


def rmac(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """Regional MAC: the sum of the L2-normalised MAC of the whole map and of each R-MAC region.

    Each region's maximum is located without a graph (a max pooling over the region's window, which reads the map
    in place: quicker than a search of a flattened copy) and then gathered from the map in one step, so the
    backward pass scatters into the map once rather than once per region (several times quicker in an attack's
    step; the same values and, but for ties, the same gradient: at a tie, the first tied place in row-major order
    takes it all)."""
    h, w = x.shape[-2:]
    with torch.no_grad():
        places = []
        for top, left, hh, ww in [(0, 0, h, w), *rmac_regions(h, w, levels)]:
            _, i = F.max_pool2d(x[..., top:top + hh, left:left + ww], (hh, ww), return_indices=True)
            i = i.flatten(-3)  # (N, C): the place in the region, row-major
            places.append((i // ww + top) * w + i % ww + left)
    maxima = x.flatten(-2).gather(-1, torch.stack(places, -1))  # (N, C, regions)
    return l2n(maxima, eps).sum(-1)  # each region's column normalised over the channels


class GeM(nn.Module):
    """GeM pooling with a learnable exponent p (Radenovic et al., TPAMI 2018).

    Args:
        p: initial exponent (3 is the usual start; 1 is average pooling, large p tends to max).
        eps: clamp floor that keeps the power of zero activations differentiable.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be positive, got {p}")
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p if self.p.requires_grad else self.p.item(), self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"


class Whitening(nn.Module):
    """Fixed whitening ``P (x - m)`` followed by L2 normalisation (learned whitening of cirtorch).

    Args:
        m: (D,) mean to subtract.
        P: (D', D) projection.
    """

    def __init__(self, m: torch.Tensor, P: torch.Tensor):
        super().__init__()
        m = torch.as_tensor(m, dtype=torch.float32).reshape(-1)
        P = torch.as_tensor(P, dtype=torch.float32)
        if P.ndim != 2 or P.shape[1] != m.numel():
            raise ValueError(f"whitening expects P of shape (D', {m.numel()}), got {tuple(P.shape)}")
        self.register_buffer("m", m)
        self.register_buffer("P", P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(F.linear(x - self.m, self.P))
