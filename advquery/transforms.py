"""Image transformations a shared photo meets, on (N, 3, H, W) tensors in [0, 1].

``straight_through`` makes any of them usable inside an attack: the forward pass sees the
real transformed image, the backward pass treats the transformation as the identity.
"""
import io as _io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid k / 255 (what saving as PNG keeps)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def jpeg_round_trip(x: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Encode each image as JPEG (PIL, 4:4:4 at quality >= 90 as advquery saves) and decode it again."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    out = []
    for img in x.detach():
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        buf = _io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
        buf.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1))
    return torch.stack(out).to(x.device, x.dtype) / 255


def straight_through(x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``transform(x)`` in the forward pass, gradient of the identity in the backward pass."""
    return x + (transform(x.detach()) - x).detach()
