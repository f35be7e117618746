"""Retrieval systems behind one interface, so that index, search and eval serve every kind of features.

A system describes image files (queries optionally cropped to a bounding box) as one array row per
image, ranks database rows for query rows, and names the settings that make rows comparable (index
manifests, cache keys). Rows are plain 2-D arrays for every system, so descriptor caches, index
files and the reuse of database rows as queries work the same for all:

- ``neural``: a :class:`~advquery.models.DescriptorModel` (GeM) at a working size and scales;
  float32 rows ranked by inner product (faiss).
- ``cedd`` / ``gist``: global descriptors, float32 rows ranked by Tanimoto similarity / by L2
  distance (score = minus the distance).
- ``sift-he``: SIFT bag of words with Hamming Embedding (:mod:`advquery.handcrafted.sift_he`); a row
  holds the words and signatures of up to ``max_features`` keypoints, ranked with an inverted file.
  Its vocabulary is given, or trained on the database by :meth:`SiftHESystem.fit`.

Hand-crafted systems read images at the working size with :func:`advquery.extraction.prepare_rgb`
(the neural system's crop and scale, PIL resizing).
"""
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .extraction import DEFAULT_SIZE, Box, Extraction, extract_descriptors, prepare_rgb, prepared_images
from .handcrafted import cedd, gist, l2_distances, tanimoto
from .handcrafted.sift_he import (DEFAULT_ITERATIONS, DEFAULT_MAX_FEATURES, DEFAULT_SAMPLE, DEFAULT_SIGMA,
                                  DEFAULT_THRESHOLD, DEFAULT_WORDS, SiftHE, Vocabulary, VocabularyError, pack, sift,
                                  unpack)
from .cache import CacheWarning, save_to_cache
from .models import DescriptorModel
from .retrieval import rank
from .transforms import TransformChain

FEATURES = ("neural", "sift-he", "cedd", "gist")


def file_key(paths: Sequence[Path], settings: dict) -> str:
    """Cache key of ``settings`` and the exact files (path, size, modification time)."""
    files = []
    for p in paths:
        st = p.stat()
        files.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps({**settings, "files": files}).encode()).hexdigest()[:24]


def top_k(scores: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k best database items per query row of (n_q, n_db) ``scores``, ties in database order."""
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


class RetrievalSystem:
    """What index, search and eval need from a retrieval system (see the module docstring)."""

    features: str
    size: int
    scales: tuple[float, ...] = (1.0,)

    @property
    def name(self) -> str:
        """What reports and manifests call the model."""
        return self.features

    def settings(self) -> dict:
        """What makes two rows comparable (cache keys, manifests); JSON-ready."""
        return {"model": self.name, "size": self.size, "scales": list(self.scales)}

    def fit(self, paths: Sequence[Path], cache_dir: Path | None = None, progress: bool | None = None) -> dict:
        """Prepare the system on its database files before describing them; returns seconds per step."""
        return {}

    def describe(self, paths: Sequence[Path], boxes: Sequence[Box | None] | None = None, *,
                 desc: str = "extracting", progress: bool | None = None,
                 transform: TransformChain | None = None) -> Extraction:
        """Rows of the readable files (input order) and one error line per unreadable file; ``transform``
        edits each decoded image and its box first."""
        raise NotImplementedError

    def _each(self, fn, paths, boxes, desc, progress, transform) -> tuple[list, list[Path], list[str]]:
        """``fn`` of each readable image prepared at the working size, the files kept, the error lines."""
        paths = [Path(p) for p in paths]
        results, kept, failures = [], [], []
        with tqdm(total=len(paths), desc=desc, unit="img", disable=None if progress is None else not progress) as bar:
            for i, item in prepared_images(paths, lambda rgb, box: prepare_rgb(rgb, self.size, box), boxes, transform):
                if isinstance(item, str):
                    failures.append(item)
                else:
                    results.append(fn(item))
                    kept.append(paths[i])
                bar.update(1)
        return results, kept, failures

    def rank(self, database: np.ndarray, queries: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first (k defaults to the whole database)."""
        score = self._scorer(database)
        return top_k(np.asarray([score(q) for q in queries], np.float64).reshape(len(queries), len(database)), k)

    def _scorer(self, database: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """A function from one query row to its (n_db,) scores, higher is better."""
        raise NotImplementedError


class NeuralSystem(RetrievalSystem):
    """A descriptor model at a working size and scales, exactly as :func:`extract_descriptors` and :func:`rank`."""

    features = "neural"

    def __init__(self, model: DescriptorModel, size: int = DEFAULT_SIZE, scales: Sequence[float] = (1.0,),
                 batch_size: int | None = None):
        self.model, self.size, self.scales, self.batch_size = model, size, tuple(scales), batch_size

    @property
    def name(self) -> str:
        return self.model.name

    def describe(self, paths, boxes=None, *, desc="extracting", progress=None, transform=None) -> Extraction:
        return extract_descriptors(self.model, paths, self.size, self.scales, boxes=boxes, batch_size=self.batch_size,
                                   progress=progress, desc=desc, transform=transform)

    def rank(self, database, queries, k=None):
        return rank(database, queries, k)


class GlobalSystem(RetrievalSystem):
    """CEDD (Tanimoto similarity) or GIST (L2 distance) of the image at the working size."""

    _KINDS = {"cedd": (cedd, tanimoto), "gist": (gist, lambda q, db: 0.0 - l2_distances(q, db))}  # describe, score

    def __init__(self, features: str, size: int = DEFAULT_SIZE):
        if features not in self._KINDS:
            raise ValueError(f"global features are {' or '.join(self._KINDS)}, got {features!r}")
        self.features, self.size = features, size
        self._describe, self._score = self._KINDS[features]

    def settings(self) -> dict:
        return {**super().settings(), "features": self.features}

    def describe(self, paths, boxes=None, *, desc="extracting", progress=None, transform=None) -> Extraction:
        rows, kept, failures = self._each(lambda rgb: self._describe(rgb).astype(np.float32), paths, boxes, desc,
                                          progress, transform)
        return Extraction(np.stack(rows) if rows else np.zeros((0, 0), np.float32), kept, failures)

    def _scorer(self, database):
        return lambda query: self._score(query, database)


class SiftHESystem(RetrievalSystem):
    """SIFT-HE with a given vocabulary, or one that :meth:`fit` trains on the database (and caches).

    Rows are :func:`~advquery.handcrafted.sift_he.pack` ed bags, ``max_features`` slots wide.
    """

    features = "sift-he"

    def __init__(self, size: int = DEFAULT_SIZE, vocabulary: Vocabulary | None = None, *,
                 max_features: int = DEFAULT_MAX_FEATURES, words: int = DEFAULT_WORDS, sample: int = DEFAULT_SAMPLE,
                 seed: int = 0, iterations: int = DEFAULT_ITERATIONS, root_sift: bool = True,
                 threshold: int = DEFAULT_THRESHOLD, sigma: float = DEFAULT_SIGMA):
        self.size, self.vocabulary, self.max_features = size, vocabulary, max_features
        self.training = {"words": words, "sample": sample, "seed": seed, "iterations": iterations,
                         "root_sift": root_sift}
        self.threshold, self.sigma = threshold, sigma
        self._fitted: tuple[list[Path], Extraction] | None = None  # the SIFT of the training files, kept for describe

    def settings(self) -> dict:
        if self.vocabulary is None:
            raise RuntimeError("the SIFT-HE system has no vocabulary yet: give one or call fit()")
        return {**super().settings(), "features": self.features, "max_features": self.max_features,
                "vocabulary": self.vocabulary.settings()}

    def fit(self, paths, cache_dir=None, progress=None) -> dict:
        """Train the vocabulary on a sample of the SIFT descriptors of ``paths`` unless there is one; a
        trained vocabulary is cached under ``cache_dir/vocabularies`` keyed by the files and settings (a cached
        one that cannot be read is trained again and replaced, one that cannot be written is not cached: each
        with a :class:`CacheWarning`)."""
        if self.vocabulary is not None:
            return {}
        paths = [Path(p) for p in paths]
        key = {"v": 1, "features": self.features, "size": self.size, "max_features": self.max_features, **self.training}
        cached = Path(cache_dir) / "vocabularies" / f"{file_key(paths, key)}.npz" if cache_dir else None
        if cached is not None and cached.is_file():
            try:
                self.vocabulary = Vocabulary.load(cached)
                return {}
            except VocabularyError as exc:
                warnings.warn(f"{exc}; a damaged cache entry: training the vocabulary again", CacheWarning,
                              stacklevel=2)
        start = time.perf_counter()
        extraction = Extraction(*self._each(lambda rgb: sift(rgb, self.max_features), paths, None,
                                            "SIFT for the vocabulary", progress, None))
        seconds = {"vocabulary_sift": time.perf_counter() - start}
        start = time.perf_counter()
        self.vocabulary = Vocabulary.train(extraction.descriptors, **self.training)
        seconds["vocabulary_kmeans"] = time.perf_counter() - start
        if cached is not None:
            save_to_cache(cached, self.vocabulary.save, "vocabulary")
        self._fitted = (paths, extraction)
        return seconds

    def describe(self, paths, boxes=None, *, desc="extracting", progress=None, transform=None) -> Extraction:
        paths = [Path(p) for p in paths]
        if self._fitted is not None and self._fitted[0] == paths and boxes is None and transform is None:
            raw, self._fitted = self._fitted[1], None  # the training files: their SIFT is at hand
            bags = [self.vocabulary.encode(d) for d in tqdm(raw.descriptors, desc=f"{desc}: visual words",
                                                            disable=None if progress is None else not progress)]
            kept, failures = raw.paths, raw.failures
        else:
            bags, kept, failures = self._each(lambda rgb: self.vocabulary.encode(sift(rgb, self.max_features)),
                                              paths, boxes, desc, progress, transform)
        return Extraction(pack(bags, self.max_features), kept, failures)

    def _scorer(self, database):
        index = SiftHE(self.vocabulary, self.size, self.max_features, self.threshold, self.sigma)
        for row in database:
            index.add(unpack(row))
        return lambda query: index.search(unpack(query))

