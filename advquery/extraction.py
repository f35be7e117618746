"""Descriptor extraction at a working size, as retrieval systems index and query photos.

The same differentiable resize serves indexing, querying and the attacks, so a protected
photo is optimised through exactly the preprocessing a tracker applies.
"""
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .io import ImageError, read_photo, to_tensor
from .models import DescriptorModel
from .transforms import Box, TransformChain

DEFAULT_SIZE = 1024
MIN_SIZE = 32  # the smallest working size: the networks downsample by 32
MULTISCALE = (1.0, 2 ** -0.5, 0.5)


def resize_long_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) so that max(H, W) == size, aspect kept (antialiased bilinear, differentiable)."""
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    if scale == 1:
        return x
    return F.interpolate(x, size=_scaled_shape(h, w, size), mode="bilinear", align_corners=False, antialias=scale < 1)


def _scaled_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(H, W) with the long side ``size``, aspect kept."""
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def crop_box(x: torch.Tensor, box: Box) -> torch.Tensor:
    """Crop (..., H, W) (tensor or array) to box (x1, y1, x2, y2) in pixels, rounded as PIL's crop rounds."""
    x1, y1, x2, y2 = (int(round(c)) for c in box)
    h, w = x.shape[-2:]
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {box} does not overlap the {w}x{h} image")
    return x[..., y1:y2, x1:x2]


def prepare(x: torch.Tensor, size: int, box: Box | None = None) -> torch.Tensor:
    """Working-size input: the whole image with long side ``size``, or the box crop scaled by the
    same factor as the whole image would be (cirtorch's bounding-box query convention)."""
    return resize_long_side(*_crop_at_scale(x, size, box))


def _crop_at_scale(x, size: int, box: Box | None):
    """The ``box`` crop of ``x`` (..., H, W) and the long side it gets when the whole image gets ``size``."""
    if box is None:
        return x, size
    crop = crop_box(x, box)
    return crop, max(1, round(size * max(crop.shape[-2:]) / max(x.shape[-2:])))


def prepare_rgb(rgb: np.ndarray, size: int, box: Box | None = None) -> np.ndarray:
    """:func:`prepare` for (H, W, 3) uint8 images (hand-crafted descriptors need 8-bit input):
    the same crop and output shape, resized by PIL (bilinear, antialiased when shrinking)."""
    chw, side = _crop_at_scale(rgb.transpose(2, 0, 1), size, box)
    img = np.ascontiguousarray(chw.transpose(1, 2, 0))
    shape = _scaled_shape(*img.shape[:2], side)
    return img if shape == img.shape[:2] else np.asarray(Image.fromarray(img).resize(shape[::-1], Image.BILINEAR))


def describe(model: DescriptorModel, x: torch.Tensor, size: int = DEFAULT_SIZE, scales: Sequence[float] = (1.0,),
             box: Box | None = None) -> torch.Tensor:
    """Descriptors (N, D) of full-resolution images (N, 3, H, W) in [0, 1]; differentiable in ``x``."""
    return model(prepare(x.to(model.device), size, box), scales=scales)


def cosine_similarity(model: DescriptorModel, x: torch.Tensor, reference: torch.Tensor, size: int = DEFAULT_SIZE,
                      scales: Sequence[float] = (1.0,)) -> list[float]:
    """Cosine similarity of the descriptors of images ``x`` (N, 3, H, W) to ``reference`` descriptors (N, D)."""
    with torch.no_grad():
        return (describe(model, x, size, scales) * reference.to(model.device)).sum(dim=1).tolist()


def prefetch(fn: Callable, items: Iterable, depth: int = 4) -> Iterator:
    """``map(fn, items)`` computed in one background thread, at most ``depth`` results ahead."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        queue = deque()
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) > depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def prepared_images(paths: Sequence[Path], prepare_fn: Callable[[np.ndarray, Box | None], object],
                    boxes: Sequence[Box | None] | None = None,
                    transform: TransformChain | None = None) -> Iterator[tuple[int, object]]:
    """``(i, prepare_fn(image i, box i))`` in input order, decoded in a background thread, or ``(i, line)``
    with one error line naming the file when it cannot be read or prepared.

    ``transform`` edits each decoded image and its box first (e.g. a platform's JPEG and resize).
    """
    boxes = list(boxes) if boxes is not None else [None] * len(paths)

    def one(i: int):
        try:
            rgb, box = read_photo(paths[i]).rgb, boxes[i]
            if transform is not None:
                rgb, box = transform.apply(rgb, box)
            return i, prepare_fn(rgb, box)
        except (ImageError, ValueError, OSError) as exc:
            return i, str(exc) if str(paths[i]) in str(exc) else f"{paths[i]}: {exc}"

    return prefetch(one, range(len(paths)))


@dataclass
class Extraction:
    """Descriptors of the readable files (rows in input order) and one error line per unreadable file."""

    descriptors: np.ndarray
    paths: list[Path]
    failures: list[str] = field(default_factory=list)


def extract_descriptors(model: DescriptorModel, paths: Sequence[Path], size: int = DEFAULT_SIZE,
                        scales: Sequence[float] = (1.0,), boxes: Sequence[Box | None] | None = None,
                        batch_size: int | None = None, progress: bool | None = None, desc: str = "extracting",
                        transform: TransformChain | None = None) -> Extraction:
    """Descriptors of image files, decoded in a background thread and batched by working-size shape.

    Unreadable files are skipped and reported in ``failures``; ``progress=None`` shows a bar only
    on a terminal. ``batch_size`` defaults to 1 on CPU (batching measured slower there) and 16 on
    CUDA. ``transform`` edits each decoded image and its box first.
    """
    paths = [Path(p) for p in paths]
    batch_size = batch_size or (16 if model.device.type == "cuda" else 1)
    dim = None
    rows: dict[int, np.ndarray] = {}
    failures: list[str] = []
    pending: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}

    def flush(shape):
        nonlocal dim
        batch = pending.pop(shape)
        with torch.inference_mode():
            out = model(torch.cat([t for _, t in batch]).to(model.device), scales=scales).float().cpu().numpy()
        dim = out.shape[1]
        for (i, _), row in zip(batch, out):
            rows[i] = row

    with tqdm(total=len(paths), desc=desc, unit="img", disable=None if progress is None else not progress) as bar:
        for i, item in prepared_images(paths, lambda rgb, box: prepare(to_tensor(rgb), size, box), boxes, transform):
            if isinstance(item, str):
                failures.append(item)
            else:
                pending.setdefault(tuple(item.shape[-2:]), []).append((i, item))
                if len(pending[tuple(item.shape[-2:])]) >= batch_size:
                    flush(tuple(item.shape[-2:]))
            bar.update(1)
        for shape in list(pending):
            flush(shape)
    order = sorted(rows)
    descriptors = np.stack([rows[i] for i in order]).astype(np.float32) if order else np.zeros((0, dim or 0), np.float32)
    return Extraction(descriptors, [paths[i] for i in order], failures)
