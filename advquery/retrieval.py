"""Image index on disk and exact inner-product search with faiss.

An index directory holds ``descriptors.npy`` (one row per image: float32 L2-normalised neural
descriptors, float32 CEDD or GIST descriptors, or uint64 SIFT-HE words and signatures),
``images.txt`` (one absolute path per line) and ``manifest.json`` (features, model, working size,
scales, system settings, advquery version), so it refuses queries described otherwise.
"""
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from . import __version__

DESCRIPTORS, IMAGES, MANIFEST = "descriptors.npy", "images.txt", "manifest.json"


class IndexFileError(ValueError):
    """An index directory that is missing, damaged, or incompatible with a query."""


@dataclass(frozen=True)
class Manifest:
    """What an index was built with; two descriptors are comparable only if these agree."""

    model: str
    size: int
    scales: tuple[float, ...]
    dim: int
    count: int
    version: str = __version__
    features: str = "neural"
    settings: dict = field(default_factory=dict)  # what else the features depend on (e.g. the SIFT-HE vocabulary)

    def compatible_with(self, model: str, size: int, scales) -> str | None:
        """None when a query built with (model, size, scales) is comparable, else the reason."""
        for what, ours, theirs in (("model", self.model, model), ("size", self.size, size),
                                   ("scales", tuple(self.scales), tuple(scales))):
            if ours != theirs:
                return f"the index was built with {what} {ours!r}, the query with {theirs!r}"
        return None


def rank(database: np.ndarray, queries: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: (scores, ids), each (n_queries, k), best first (k defaults to all)."""
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    k = database.shape[0] if k is None else min(k, database.shape[0])
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class ImageIndex:
    """Descriptors of a set of images with the manifest that makes them comparable."""

    descriptors: np.ndarray
    paths: list[Path]
    manifest: Manifest

    def save(self, directory: Path) -> None:
        """Write the index files atomically (the manifest last, so a complete manifest means a complete index)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.descriptors.astype(np.float32) if self.descriptors.dtype.kind == "f" else self.descriptors
        _write_atomic(directory / DESCRIPTORS, lambda f: np.save(f, rows))
        _write_atomic(directory / IMAGES, lambda f: f.write("".join(f"{p}\n" for p in self.paths).encode()))
        _write_atomic(directory / MANIFEST, lambda f: f.write(json.dumps(asdict(self.manifest), indent=2).encode()))

    @classmethod
    def load(cls, directory: Path) -> "ImageIndex":
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise IndexFileError(f"{directory}: not an advquery index (no {MANIFEST}; build one with 'advquery index build')")
        try:
            meta = json.loads((directory / MANIFEST).read_text())
            manifest = Manifest(**{**meta, "scales": tuple(meta["scales"])})
            descriptors = np.load(directory / DESCRIPTORS, allow_pickle=False)
            paths = [Path(line) for line in (directory / IMAGES).read_text().splitlines()]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise IndexFileError(f"{directory}: damaged index ({exc})") from None
        if descriptors.shape != (manifest.count, manifest.dim) or len(paths) != manifest.count:
            raise IndexFileError(f"{directory}: damaged index (manifest says {manifest.count} x {manifest.dim}, "
                              f"found {descriptors.shape} descriptors and {len(paths)} paths)")
        return cls(descriptors, paths, manifest)

    def search(self, queries: np.ndarray, k: int = 10, ranker: Callable = rank) -> list[list[tuple[Path, float]]]:
        """The k best (path, score) pairs for each row of ``queries`` (n, D), ranked by inner product or by
        ``ranker(database, queries, k) -> (scores, ids)`` (a retrieval system's ``rank``)."""
        scores, ids = ranker(self.descriptors, queries, k)
        return [[(self.paths[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0] for row_s, row_i in zip(scores, ids)]
