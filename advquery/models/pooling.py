"""Global pooling and descriptor post-processing: GeM, L2 normalisation, whitening."""
import torch
from torch import nn
import torch.nn.functional as F


def l2n(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise the rows of a (N, D) tensor."""
    return x / (x.norm(p=2, dim=1, keepdim=True) + eps)


def gem(x: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over H, W of a (N, C, H, W) map: (mean(clamp(x, eps)^p))^(1/p) -> (N, C)."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


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
        return gem(x, self.p, self.eps)

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
