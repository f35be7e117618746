"""Reduced precision for the network passes of an attack: bfloat16 on a CPU that computes it natively and where
it is measured to be faster, float16 or bfloat16 on CUDA, float32 elsewhere.

A CPU's bfloat16 instructions do not make every model faster at every size and thread count (on some CPUs with
AVX512-BF16 and AMX a pass of EfficientNet-Lite is slower in bfloat16 at 448-512 px and faster at 1024 px), so
``auto`` times forward and backward passes of the model in both precisions at the sizes an attack's passes have
(:data:`PROBE_SHAPES`), once per machine, and remembers the answer in the cache folder (``precision.json``, keyed by
processor, torch and advquery version, the trunk's code, threads, model and the probe): the same machine then always
makes the same choice, and the seeds give the same photos.

Only the trunk's convolutions run in reduced precision (``torch.autocast``); pooling, normalisation and
whitening run in float32 (:class:`~advquery.models.DescriptorModel`), and so do the perturbation, its
projection, the SSIM price and every reported descriptor and similarity.

>>> check_precision("float16", "cpu")
Traceback (most recent call last):
ValueError: precision float16 needs a CUDA device, got cpu; use bfloat16 or float32
"""
import hashlib
import inspect
import json
import platform
import time
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch

from .. import __version__
from ..cache import default_cache_dir, save_to_cache
from ..io import atomic_write

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
BFLOAT16_GAIN = 1.15  # auto takes bfloat16 on a CPU when the probe is at least this much faster than in float32
# The measured passes, (height, width): a tracker view at a small working size and a whole 1024 px photo, the two
# ends of what an attack step runs; one pass of each, their times summed.
PROBE_SHAPES = ((448, 448), (768, 1024))
_CHOICES: dict[str, dict] = {}  # this process's measured choices, by cache key


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CPU with AVX512-BF16 or AMX, or a CUDA device with bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def check_precision(precision: str, device: torch.device | str | None = None) -> None:
    """Raise ValueError unless ``precision`` is one of :data:`PRECISIONS` and, with a ``device``, runs there
    (``float16`` needs CUDA)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float16" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"precision float16 needs a CUDA device, got {device}; use bfloat16 or float32")


def autocast_dtype(precision: str, model) -> torch.dtype | None:
    """The autocast dtype of ``precision`` for the passes of ``model`` (None: float32, no autocast).

    ``auto``: on CUDA bfloat16 or else float16; on a CPU bfloat16 where it computes it natively and
    :func:`bfloat16_pays` for the model, else float32. ``float16`` needs CUDA.

    Raises:
        ValueError: unknown precision, or float16 on a device other than CUDA.
    """
    check_precision(precision, model.device)
    if precision == "float32":
        return None
    if precision in ("bfloat16", "float16"):
        return getattr(torch, precision)
    if model.device.type == "cuda":
        return torch.bfloat16 if native_bfloat16(model.device) else torch.float16
    return torch.bfloat16 if native_bfloat16(model.device) and bfloat16_pays(model) else None


def precision_name(dtype: torch.dtype | None) -> str:
    """The precision an autocast dtype of :func:`autocast_dtype` runs the passes in: ``float32`` (None),
    ``bfloat16`` or ``float16``."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def processor() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def trunk_code(model) -> str:
    """A digest of the source file of the class of ``model``'s trunk (EfficientNet-Lite's for the built-in models;
    for a cirtorch checkpoint torch's ``Sequential``, whose version the key holds anyway): a change to its layers can
    change which precision is faster, between releases too."""
    return _file_digest(inspect.getfile(type(model.features)))


@lru_cache
def _file_digest(path: str) -> str:  # read once per process, not at every protection
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:8]


def bfloat16_pays(model) -> bool:
    """Whether forward and backward passes of ``model`` on its CPU (:data:`PROBE_SHAPES`) are at least
    :data:`BFLOAT16_GAIN` times faster in bfloat16 than in float32: measured once per processor, torch and advquery
    version and trunk code (:func:`trunk_code`, part of what is timed), thread count, model and probe, and remembered
    in ``precision.json`` of the cache folder (:func:`~advquery.cache.default_cache_dir`)."""
    probe = " + ".join(f"{h}x{w}" for h, w in PROBE_SHAPES)
    key = (f"{processor()} | torch {torch.__version__} | advquery {__version__} | trunk {trunk_code(model)}"
           f" | {torch.get_num_threads()} threads | {model.name} | probe {probe}")
    path = default_cache_dir() / "precision.json"
    if key not in _CHOICES:
        known = _read_choices(path)
        if key in known:
            _CHOICES[key] = known[key]
        else:
            float32, bfloat16 = _pass_seconds(model)
            _CHOICES[key] = {"float32_s": float32, "bfloat16_s": bfloat16, "bfloat16": float32 >= BFLOAT16_GAIN * bfloat16}
            known[key] = _CHOICES[key]

            def save(p: Path) -> None:
                with atomic_write(p) as f:
                    f.write(json.dumps(known, indent=1).encode())
            save_to_cache(path, save, "precision")
    return bool(_CHOICES[key]["bfloat16"])


def _read_choices(path: Path) -> dict:
    """The remembered choices, or none when the file is missing or damaged (then measured again)."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _pass_seconds(model, repeats: int = 3) -> tuple[float, float]:
    """Seconds of one forward and backward pass at each of :data:`PROBE_SHAPES`, summed, in float32 and in
    bfloat16: of each, the fastest of ``repeats``, interleaved so that other load on the machine weighs on both; the
    first pass of each sets its kernels up and is not counted."""
    generator = torch.Generator().manual_seed(0)
    totals = {None: 0.0, torch.bfloat16: 0.0}
    for shape in PROBE_SHAPES:
        x = torch.rand(1, 3, *shape, generator=generator).to(model.device)
        best = dict.fromkeys(totals, float("inf"))
        for repeat in range(repeats + 1):
            for dtype in best:
                probe = x.clone().requires_grad_(True)
                start = time.perf_counter()
                with autocast(dtype, model.device):
                    model(probe).sum().backward()
                if repeat:
                    best[dtype] = min(best[dtype], time.perf_counter() - start)
        for dtype in totals:
            totals[dtype] += best[dtype]
    return totals[None], totals[torch.bfloat16]


def autocast(dtype: torch.dtype | None, device: torch.device):
    """A context in which the network passes run in ``dtype`` (None: float32, a no-op context)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def float32_context(device: torch.device):
    """A context that switches autocast off: what runs inside stays in float32."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)
