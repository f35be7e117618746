"""Evaluate a retrieval system (a descriptor model, or SIFT-HE, CEDD, GIST) on a benchmark: extract, rank, score.

Database descriptors are cached on disk, keyed by the system's settings (model, working size,
scales; for SIFT-HE the vocabulary) and the exact database files (path, size, modification
time), so repeated evaluations of modified queries only extract the queries. A cache entry is
checked before use (shape, dtype, finite values, one row per image, its first row against a fresh
description of the first image); a damaged one is described again, with a :class:`CacheWarning`.
"""
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..extraction import DEFAULT_SIZE
from ..io import IMAGE_EXTENSIONS, atomic_write
from ..models import DescriptorModel
from ..retrieval import check_rows
from ..cache import CacheWarning, default_cache_dir, save_to_cache
from ..systems import NeuralSystem, RetrievalSystem, file_key
from ..transforms import TransformChain
from .datasets import RetrievalDataset
from .metrics import MapResult, compute_map, random_map

CACHE_VERSION = 1


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
    features: str = "neural"
    settings: dict = field(default_factory=dict)
    distractors: int = 0

    def summary(self) -> dict:
        """JSON-ready summary with per-query AP (null for queries without positives)."""
        return {
            "dataset": self.dataset, "model": self.model, "size": self.size, "scales": list(self.scales),
            "queries": self.queries, "transform": self.transform,
            "replaced_database_images": self.replaced_database_images, "distractors": self.distractors,
            "seconds": self.seconds,
            "features": self.features, "settings": self.settings,
            "protocols": {p: {"map": r.map, "mp_at_k": {str(k): v for k, v in r.mp_at_k.items()},
                              "n_evaluated": r.n_evaluated, "n_skipped": r.n_skipped, "random_map": self.random[p],
                              "per_query": {f.stem: (None if np.isnan(ap) else float(ap))
                                            for f, ap in zip(self.query_files, r.aps)}}
                          for p, r in self.results.items()},
        }


def _cache_root(cache_dir: Path | None | bool) -> Path | None:
    return None if cache_dir is False else Path(cache_dir or default_cache_dir())


def _extract_all(system: RetrievalSystem, paths, boxes=None, desc="extracting", progress=None,
                 transform=None) -> np.ndarray:
    result = system.describe(paths, boxes, desc=desc, progress=progress, transform=transform)
    if result.failures:
        raise EvaluationError(f"{len(result.failures)} image(s) could not be read: " + "; ".join(result.failures[:5]))
    return result.descriptors


def descriptor_cache_path(paths: Sequence[Path], system: RetrievalSystem,
                          cache_dir: Path | None | bool = None) -> Path | None:
    """Where the descriptors of the files ``paths`` are cached (None when ``cache_dir`` is False).

    The key covers the files, not a dataset name, so datasets sharing a database (or a distractor list)
    share its cache.
    """
    root = _cache_root(cache_dir)
    if root is None:
        return None
    return root / "descriptors" / f"{file_key(paths, {'v': CACHE_VERSION, **system.settings()})}.npy"


def database_cache_path(dataset: RetrievalDataset, system: RetrievalSystem,
                        cache_dir: Path | None | bool = None) -> Path | None:
    """Where the database descriptors are cached (None when ``cache_dir`` is False)."""
    return descriptor_cache_path(dataset.images, system, cache_dir)


def cached_descriptors(paths: Sequence[Path], system: RetrievalSystem, cache_dir: Path | None | bool = None,
                       progress: bool | None = None, desc: str = "extracting") -> tuple[np.ndarray, float | None]:
    """(rows, seconds) of the files ``paths`` (EvaluationError when one cannot be read): from the cache when the
    same files were described before (seconds None), else described and cached.

    ``cache_dir=None`` uses :func:`default_cache_dir`; pass ``False`` to disable caching. A cache entry
    that fails its check is described again (:class:`CacheWarning`); a cache that cannot be written warns.
    """
    path = descriptor_cache_path(paths, system, cache_dir)
    cached = _cached_rows(path, paths, system) if path is not None and path.is_file() else None
    if cached is not None:
        return cached, None
    start = time.perf_counter()
    descriptors = _extract_all(system, paths, desc=desc, progress=progress)
    seconds = time.perf_counter() - start
    if path is not None:
        def save(target: Path) -> None:
            with atomic_write(target) as f:
                np.save(f, descriptors)
        save_to_cache(path, save, "descriptor")
    return descriptors, seconds


def database_descriptors(dataset: RetrievalDataset, system: RetrievalSystem, cache_dir: Path | None | bool = None,
                         progress: bool | None = None, timings: dict | None = None) -> np.ndarray:
    """(n_db, D) descriptors of the database by :func:`cached_descriptors`; when the database is described,
    ``timings['database']`` gets its seconds."""
    rows, seconds = cached_descriptors(dataset.images, system, cache_dir, progress, f"{dataset.name} database")
    if seconds is not None and timings is not None:
        timings["database"] = seconds
    return rows


def _cached_rows(path: Path, paths: Sequence[Path], system: RetrievalSystem) -> np.ndarray | None:
    """The cached rows at ``path`` when they pass the check, else None (with a :class:`CacheWarning`)."""
    problem = None
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        rows, problem = None, f"unreadable: {str(exc) or 'empty file'}"
    problem = problem or check_rows(rows, len(paths)) or _first_row_problem(rows, paths, system)
    if problem is None:
        return rows
    warnings.warn(f"{path}: damaged descriptor cache ({problem}); describing the images again", CacheWarning,
                  stacklevel=4)
    return None


def _first_row_problem(rows: np.ndarray, paths: Sequence[Path], system: RetrievalSystem) -> str | None:
    """Whether the first cached row is the system's description of the first file (within 1 % for float
    descriptors, which differ slightly between devices): a cache of another shape, dtype or model fails here."""
    fresh = system.describe(paths[:1], progress=False)
    if fresh.failures:
        return f"cannot check it: {fresh.failures[0]}"
    row = fresh.descriptors[0]
    if rows.dtype != row.dtype or rows.shape[1] != row.shape[0]:
        return f"rows of {rows.shape[1]} {rows.dtype}, the system describes {row.shape[0]} {row.dtype}"
    if row.dtype.kind == "f":
        same = np.linalg.norm(rows[0].astype(np.float64) - row) <= 0.01 * max(np.linalg.norm(row), 1e-12)
    else:
        same = np.array_equal(rows[0], row)
    return None if same else f"its first row is not the description of {paths[0]}"


def replacement_files(names: Sequence[Path], directory: Path | None) -> list[Path]:
    """For each path, the file in ``directory`` with the same stem (any image extension), else the path itself."""
    if directory is None:
        return list(names)
    directory = Path(directory)
    if not directory.is_dir():
        raise EvaluationError(f"{directory}: not a directory")
    by_stem = {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    return [by_stem.get(p.stem, p) for p in names]


def evaluate(dataset: RetrievalDataset, model: DescriptorModel | RetrievalSystem, size: int = DEFAULT_SIZE,
             scales: Sequence[float] = (1.0,), queries: str = "bb", protocols: Sequence[str] | None = None,
             query_dir: Path | None = None, cache_dir: Path | None | bool = None, progress: bool | None = None,
             random_trials: int = 20, transform: TransformChain | None = None,
             db_dir: Path | None = None, distractors: Sequence[Path] = ()) -> EvaluationReport:
    """mAP and mP@k of ``model`` on ``dataset`` for each protocol (default: all the dataset supports).

    Args:
        model: a descriptor model (described at ``size`` and ``scales``) or a retrieval system, which
            brings its own settings; a system that needs training (SIFT-HE without a vocabulary) is
            fitted on the dataset's database first (its time in ``seconds``).
        queries: 'bb' crops queries to their bounding box where the dataset has one; 'wi' uses whole images.
        query_dir: take each query from this folder by file stem (modified or protected queries),
            falling back to the dataset's own file.
        transform: applied to every query file before description (its box follows the transformation).
        db_dir: take database images from this folder by file stem (e.g. protected photos leaked into
            the collection); only the replaced images are described again, never from the cache.
        distractors: image files added to the database after the dataset's own (e.g. the revisitop 1M
            distractors, :func:`~advquery.evaluation.datasets.load_distractors`), described and cached like
            the database, in a cache entry of their own (shared by every dataset they are added to); none may
            be one of the dataset's images. The ranking covers them; the ground truth is unchanged.
    """
    if queries not in ("bb", "wi"):
        raise ValueError(f"queries must be 'bb' or 'wi', got {queries!r}")
    protocols = tuple(protocols or dataset.protocols)
    own = {p.resolve() for p in dataset.images} if distractors else set()
    also = [p for p in distractors if Path(p).resolve() in own]
    if also:  # before any image is described
        raise EvaluationError(f"{len(also)} distractor(s) are images of {dataset.name}'s database, e.g. {also[0]}")
    if all(b is None for b in dataset.query_boxes):
        queries = "wi"  # nothing to crop: report what was done
    system = model if isinstance(model, RetrievalSystem) else NeuralSystem(model, size, scales)
    timings = system.fit(dataset.images, _cache_root(cache_dir), progress)
    db = database_descriptors(dataset, system, cache_dir, progress, timings)  # times only a real extraction
    db_files = replacement_files(dataset.images, db_dir)
    replaced = [i for i, (a, b) in enumerate(zip(dataset.images, db_files)) if a != b]
    if replaced:
        start = time.perf_counter()
        db = db.copy()
        db[replaced] = _extract_all(system, [db_files[i] for i in replaced],
                                    desc=f"{dataset.name} replaced database images", progress=progress)
        timings["replaced_database_images"] = time.perf_counter() - start
    if distractors:
        extra, seconds = cached_descriptors(list(distractors), system, cache_dir, progress,
                                            f"{len(distractors)} distractors")
        if seconds is not None:
            timings["distractors"] = seconds
    query_files = replacement_files(dataset.queries, query_dir)
    boxes = dataset.query_boxes if queries == "bb" else [None] * len(query_files)
    start = time.perf_counter()
    # Whole-image queries that are untransformed database images reuse their database descriptor.
    row_of = {p: i for i, p in enumerate(db_files)} if transform is None else {}
    reused = {i: row_of[f] for i, (f, b) in enumerate(zip(query_files, boxes)) if b is None and f in row_of}
    todo = [i for i in range(len(query_files)) if i not in reused]
    q = np.zeros((len(query_files), db.shape[1]), db.dtype)
    for i, row in reused.items():
        q[i] = db[row]
    if todo:
        q[todo] = _extract_all(system, [query_files[i] for i in todo], boxes=[boxes[i] for i in todo],
                               desc=f"{dataset.name} queries", progress=progress, transform=transform)
    timings["queries"] = time.perf_counter() - start
    if distractors:
        db = np.concatenate([db, extra])
    ranks = system.rank(db, q)[1].T.astype(np.int64)  # (n_db, n_queries)
    results, floors = {}, {}
    for p in protocols:
        gnd = dataset.ground_truth(p)
        results[p] = compute_map(ranks, gnd)
        floors[p] = random_map(gnd, len(db), trials=random_trials)
    return EvaluationReport(dataset.name, system.name, system.size, tuple(system.scales), queries, query_files,
                            results, floors, ranks, timings, str(transform) if transform else "none", len(replaced),
                            system.features, system.settings(), len(distractors))
