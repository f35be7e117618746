"""Image index on disk and exact inner-product search with faiss.

An index directory holds ``descriptors.npy`` (one row per image: float32 L2-normalised neural
descriptors, float32 CEDD or GIST descriptors, or uint64 SIFT-HE words and signatures),
``images.jsonl`` (one absolute path per line as a JSON string, so that any file name, even one
with a newline, round-trips) and ``manifest.json`` (features, model, working size, scales, system
settings, advquery version), so it refuses queries described otherwise. The manifest also holds a
digest of all three: an index whose files were damaged, edited or mixed up is refused.
"""
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import faiss
import numpy as np

from . import __version__
from .io import atomic_write, remove_stale_temporaries

DESCRIPTORS, IMAGES, MANIFEST = "descriptors.npy", "images.jsonl", "manifest.json"


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

    @classmethod
    def from_json(cls, meta: object) -> "Manifest":
        """The manifest a ``manifest.json`` describes; ValueError naming the first field that is
        missing or of the wrong type."""
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, found {type(meta).__name__}")
        checks = {"model": (str, "a string"), "size": (int, "a positive integer"), "dim": (int, "a positive integer"),
                  "count": (int, "a positive integer"), "version": (str, "a string"), "features": (str, "a string"),
                  "settings": (dict, "an object"), "scales": (list, "a list of positive numbers")}
        for f in fields(cls):
            if f.name not in meta:
                if f.name in ("model", "size", "scales", "dim", "count"):
                    raise ValueError(f"no {f.name!r}")
                continue
            kind, what = checks[f.name]
            value = meta[f.name]
            ok = isinstance(value, kind) and not isinstance(value, bool)
            if ok and kind is int:
                ok = value > 0
            if ok and kind is list:
                ok = bool(value) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
                                         for v in value)
            if not ok:
                raise ValueError(f"{f.name!r} must be {what}, found {value!r}")
        unknown = set(meta) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        return cls(**{**meta, "scales": tuple(float(v) for v in meta["scales"])})

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


def check_rows(rows: object, count: int, dtype: np.dtype | None = None) -> str | None:
    """None when ``rows`` is a 2-D array of ``count`` descriptor rows (of ``dtype``, when given) with
    finite values, else what is wrong: the one rule for index files and descriptor caches."""
    if not isinstance(rows, np.ndarray) or rows.ndim != 2:
        return f"expected a 2-D array, found {getattr(rows, 'shape', type(rows).__name__)}"
    if rows.shape[0] != count:
        return f"{rows.shape[0]} rows for {count} images"
    if dtype is not None and rows.dtype != dtype:
        return f"rows of {rows.dtype}, expected {np.dtype(dtype)}"
    if rows.dtype.kind not in "fu":
        return f"rows of {rows.dtype}, expected floating point or unsigned integer descriptors"
    if rows.dtype.kind == "f" and not np.isfinite(rows).all():
        return "descriptors hold NaN or infinity"
    return None


def _digest(manifest: "Manifest", paths: list[Path], rows: np.ndarray) -> str:
    h = hashlib.sha256(json.dumps(asdict(manifest), sort_keys=True).encode())
    h.update(json.dumps([str(p) for p in paths]).encode())
    h.update(f"{rows.dtype.str}{rows.shape}".encode())
    h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()


def _image_lines(paths: list[Path]) -> bytes:
    # ensure_ascii: newlines, line separators and undecodable bytes of file names are escaped
    return "".join(json.dumps(str(p)) + "\n" for p in paths).encode("ascii")


@dataclass
class ImageIndex:
    """Descriptors of a set of images with the manifest that makes them comparable."""

    descriptors: np.ndarray
    paths: list[Path]
    manifest: Manifest

    def save(self, directory: Path) -> None:
        """Write the index files atomically, all or none: each is written in full beside its target before
        any replaces it (the manifest last, so a complete manifest means a complete index). Leftovers of a
        killed earlier save are removed first."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(directory)
        rows = self.descriptors.astype(np.float32) if self.descriptors.dtype.kind == "f" else self.descriptors
        meta = {**asdict(self.manifest), "digest": _digest(self.manifest, self.paths, rows)}
        # Replaced in reverse order of opening when the block ends: descriptors, images, manifest.
        with atomic_write(directory / MANIFEST) as manifest, atomic_write(directory / IMAGES) as images, \
                atomic_write(directory / DESCRIPTORS) as descriptors:
            np.save(descriptors, rows)
            images.write(_image_lines(self.paths))
            manifest.write(json.dumps(meta, indent=2).encode())
            for f in (descriptors, images, manifest):
                f.flush()  # a full disk fails here, before anything is replaced

    @classmethod
    def load(cls, directory: Path) -> "ImageIndex":
        """Read an index directory; IndexFileError ``"DIR: damaged index: what"`` when a file is missing,
        unreadable, malformed, or does not belong to the others."""
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise IndexFileError(f"{directory}: not an advquery index (no {MANIFEST}; build one with 'advquery index build')")

        def damaged(what: str) -> IndexFileError:
            return IndexFileError(f"{directory}: damaged index: {what}")

        try:
            meta = json.loads((directory / MANIFEST).read_text())
            digest = meta.pop("digest", None) if isinstance(meta, dict) else None
            manifest = Manifest.from_json(meta)
        except (OSError, ValueError) as exc:
            raise damaged(f"{MANIFEST}: {exc}") from None
        if not isinstance(digest, str):
            raise damaged(f"{MANIFEST} has no digest (an index from an older advquery: build it again)")
        try:
            rows = np.load(directory / DESCRIPTORS, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise damaged(f"{DESCRIPTORS} cannot be read ({str(exc) or 'empty file'})") from None
        try:
            paths = [Path(json.loads(line)) for line in (directory / IMAGES).read_text(encoding="ascii").split("\n")[:-1]]
        except (OSError, ValueError, TypeError) as exc:
            raise damaged(f"{IMAGES} cannot be read ({exc})") from None
        if rows.ndim != 2 or rows.shape != (manifest.count, manifest.dim) or len(paths) != manifest.count:
            raise damaged(f"the manifest says {manifest.count} x {manifest.dim}, found {rows.shape} descriptors "
                          f"and {len(paths)} paths")
        problem = check_rows(rows, manifest.count)
        if problem:
            raise damaged(f"{DESCRIPTORS}: {problem}")
        if _digest(manifest, paths, rows) != digest:
            raise damaged(f"{MANIFEST}, {IMAGES} and {DESCRIPTORS} do not match the digest they were saved with "
                          "(a file was edited or comes from another index)")
        return cls(rows, paths, manifest)

    def search(self, queries: np.ndarray, k: int = 10, ranker: Callable = rank) -> list[list[tuple[Path, float]]]:
        """The k best (path, score) pairs for each row of ``queries`` (n, D), ranked by inner product or by
        ``ranker(database, queries, k) -> (scores, ids)`` (a retrieval system's ``rank``)."""
        scores, ids = ranker(self.descriptors, queries, k)
        return [[(self.paths[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0] for row_s, row_i in zip(scores, ids)]
