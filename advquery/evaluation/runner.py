"""Evaluate a descriptor model on a retrieval benchmark: extract, rank, score.

Database descriptors are cached on disk, keyed by the model, working size, scales and the
exact database files (path, size, modification time), so repeated evaluations of modified
queries only extract the queries.
"""
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..extraction import DEFAULT_SIZE, extract_descriptors
from ..io import IMAGE_EXTENSIONS, read_photo, to_tensor, to_uint8
from ..models import DescriptorModel
from ..retrieval import rank
from ..transforms import TransformChain
from .datasets import RetrievalDataset
from .metrics import MapResult, compute_map, random_map

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$ADVQUERY_CACHE`` or ``~/.cache/advquery``."""
    return Path(os.environ.get("ADVQUERY_CACHE", Path.home() / ".cache" / "advquery"))


class EvaluationError(RuntimeError):
    """Evaluation cannot proceed (e.g. unreadable benchmark images); the message names them."""


@dataclass
class EvaluationReport:
    """Scores of one model on one dataset, with the ranking that produced them."""

    dataset: str
    model: str
    size: int
    scales: tuple[float, ...]
    queries: str
    query_files: list[Path]
    results: dict[str, MapResult]
    random: dict[str, float]
    ranks: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    transform: str = "none"
    replaced_database_images: int = 0

    def summary(self) -> dict:
        """JSON-ready summary with per-query AP (null for queries without positives)."""
        return {
            "dataset": self.dataset, "model": self.model, "size": self.size, "scales": list(self.scales),
            "queries": self.queries, "transform": self.transform,
            "replaced_database_images": self.replaced_database_images, "seconds": self.seconds,
            "protocols": {p: {"map": r.map, "mp_at_k": {str(k): v for k, v in r.mp_at_k.items()},
                              "n_evaluated": r.n_evaluated, "n_skipped": r.n_skipped, "random_map": self.random[p],
                              "per_query": {f.stem: (None if np.isnan(ap) else float(ap))
                                            for f, ap in zip(self.query_files, r.aps)}}
                          for p, r in self.results.items()},
        }


def _cache_key(paths: Sequence[Path], model: str, size: int, scales: Sequence[float]) -> str:
    files = []
    for p in paths:
        st = p.stat()
        files.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    blob = json.dumps({"v": CACHE_VERSION, "model": model, "size": size, "scales": list(scales), "files": files})
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _extract_all(model, paths, size, scales, boxes=None, desc="extracting", progress=None, loader=None) -> np.ndarray:
    result = extract_descriptors(model, paths, size, scales, boxes=boxes, desc=desc, progress=progress, loader=loader)
    if result.failures:
        raise EvaluationError(f"{len(result.failures)} image(s) could not be read: " + "; ".join(result.failures[:5]))
    return result.descriptors


def database_cache_path(dataset: RetrievalDataset, model: DescriptorModel, size: int, scales: Sequence[float],
                        cache_dir: Path | None | bool = None) -> Path | None:
    """Where the database descriptors are cached (None when ``cache_dir`` is False).

    The key covers the files, not the dataset name, so datasets sharing a database share its cache.
    """
    if cache_dir is False:
        return None
    key = _cache_key(dataset.images, model.name, size, scales)
    return Path(cache_dir or default_cache_dir()) / "descriptors" / f"{key}.npy"


def database_descriptors(dataset: RetrievalDataset, model: DescriptorModel, size: int = DEFAULT_SIZE,
                         scales: Sequence[float] = (1.0,), cache_dir: Path | None | bool = None,
                         progress: bool | None = None) -> np.ndarray:
    """(n_db, D) descriptors of the database, from the cache when the same files were described before.

    ``cache_dir=None`` uses :func:`default_cache_dir`; pass ``False`` to disable caching.
    """
    path = database_cache_path(dataset, model, size, scales, cache_dir)
    if path is not None and path.is_file():
        return np.load(path)
    descriptors = _extract_all(model, dataset.images, size, scales, desc=f"{dataset.name} database",
                               progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, descriptors)
        os.replace(tmp, path)
    return descriptors


def replacement_files(names: Sequence[Path], directory: Path | None) -> list[Path]:
    """For each path, the file in ``directory`` with the same stem (any image extension), else the path itself."""
    if directory is None:
        return list(names)
    directory = Path(directory)
    if not directory.is_dir():
        raise EvaluationError(f"{directory}: not a directory")
    by_stem = {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    return [by_stem.get(p.stem, p) for p in names]


def transformed_queries(files: Sequence[Path], boxes: Sequence, transform: TransformChain | None):
    """Boxes of the queries after ``transform`` and a loader that applies it to each decoded file.

    A box the transformation crops away entirely becomes None (the whole transformed query).
    """
    if transform is None:
        return list(boxes), None
    mapped = [None if b is None else transform.map_box(b, read_photo(f).rgb.shape[:2]) for f, b in zip(files, boxes)]
    return mapped, lambda path: to_uint8(transform(to_tensor(read_photo(path).rgb)))


def evaluate(dataset: RetrievalDataset, model: DescriptorModel, size: int = DEFAULT_SIZE,
             scales: Sequence[float] = (1.0,), queries: str = "bb", protocols: Sequence[str] | None = None,
             query_dir: Path | None = None, cache_dir: Path | None | bool = None, progress: bool | None = None,
             random_trials: int = 20, transform: TransformChain | None = None,
             db_dir: Path | None = None) -> EvaluationReport:
    """mAP and mP@k of ``model`` on ``dataset`` for each protocol (default: all the dataset supports).

    Args:
        queries: 'bb' crops queries to their bounding box where the dataset has one; 'wi' uses whole images.
        query_dir: take each query from this folder by file stem (modified or protected queries),
            falling back to the dataset's own file.
        transform: applied to every query file before description (its box follows the transformation).
        db_dir: take database images from this folder by file stem (e.g. protected photos leaked into
            the collection); only the replaced images are described again, never from the cache.
    """
    if queries not in ("bb", "wi"):
        raise ValueError(f"queries must be 'bb' or 'wi', got {queries!r}")
    protocols = tuple(protocols or dataset.protocols)
    if all(b is None for b in dataset.query_boxes):
        queries = "wi"  # nothing to crop: report what was done
    timings = {}
    cache_path = database_cache_path(dataset, model, size, scales, cache_dir)
    cached = cache_path is not None and cache_path.is_file()
    start = time.perf_counter()
    db = database_descriptors(dataset, model, size, scales, cache_dir, progress)
    if not cached:  # time only a real extraction
        timings["database"] = time.perf_counter() - start
    db_files = replacement_files(dataset.images, db_dir)
    replaced = [i for i, (a, b) in enumerate(zip(dataset.images, db_files)) if a != b]
    if replaced:
        start = time.perf_counter()
        db = db.copy()
        db[replaced] = _extract_all(model, [db_files[i] for i in replaced], size, scales,
                                    desc=f"{dataset.name} replaced database images", progress=progress)
        timings["replaced_database_images"] = time.perf_counter() - start
    query_files = replacement_files(dataset.queries, query_dir)
    boxes = dataset.query_boxes if queries == "bb" else [None] * len(query_files)
    start = time.perf_counter()
    boxes, loader = transformed_queries(query_files, boxes, transform)
    # Whole-image queries that are untransformed database images reuse their database descriptor.
    row_of = {p: i for i, p in enumerate(db_files)} if transform is None else {}
    reused = {i: row_of[f] for i, (f, b) in enumerate(zip(query_files, boxes)) if b is None and f in row_of}
    todo = [i for i in range(len(query_files)) if i not in reused]
    q = np.zeros((len(query_files), db.shape[1]), np.float32)
    for i, row in reused.items():
        q[i] = db[row]
    if todo:
        q[todo] = _extract_all(model, [query_files[i] for i in todo], size, scales, boxes=[boxes[i] for i in todo],
                               desc=f"{dataset.name} queries", progress=progress, loader=loader)
    timings["queries"] = time.perf_counter() - start
    ranks = rank(db, q)[1].T.astype(np.int64)  # (n_db, n_queries)
    results, floors = {}, {}
    for p in protocols:
        gnd = dataset.ground_truth(p)
        results[p] = compute_map(ranks, gnd)
        floors[p] = random_map(gnd, len(dataset.images), trials=random_trials)
    return EvaluationReport(dataset.name, model.name, size, tuple(scales), queries, query_files, results, floors,
                            ranks, timings, str(transform) if transform else "none", len(replaced))
