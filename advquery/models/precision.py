"""Reduced precision for the network passes of an attack: bfloat16 where the CPU computes it natively,
float16 or bfloat16 on CUDA, float32 elsewhere.

Only the trunk's convolutions run in reduced precision (``torch.autocast``); pooling, normalisation and
whitening run in float32 (:class:`~advquery.models.DescriptorModel`), and so do the perturbation, its
projection, the SSIM price and every reported descriptor and similarity.

>>> autocast_dtype("float32", torch.device("cpu")) is None
True
"""
from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CPU with AVX512-BF16 or AMX, or a CUDA device with bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def check_precision(precision: str) -> None:
    """Raise ValueError unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: float32, no autocast).

    ``auto``: bfloat16 on a CPU that computes it natively (emulated bfloat16 is slower than float32),
    bfloat16 or else float16 on CUDA, float32 elsewhere. ``float16`` needs CUDA.

    Raises:
        ValueError: unknown precision, or float16 on a device other than CUDA.
    """
    check_precision(precision)
    device = torch.device(device)
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float16":
        if device.type != "cuda":
            raise ValueError(f"precision float16 needs a CUDA device, got {device}; use bfloat16 or float32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if native_bfloat16(device) else torch.float16
    return torch.bfloat16 if native_bfloat16(device) else None


def autocast(dtype: torch.dtype | None, device: torch.device):
    """A context in which the network passes run in ``dtype`` (None: float32, a no-op context)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def float32_context(device: torch.device):
    """A context that switches autocast off: what runs inside stays in float32."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)
