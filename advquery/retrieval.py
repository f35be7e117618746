"""Image index on disk: exact inner-product search with faiss, or an IVF-PQ index for large collections.

An index directory holds ``descriptors.npy`` (one row per image: float32 L2-normalised neural
descriptors, float32 CEDD or GIST descriptors, or uint64 SIFT-HE words and signatures),
``images.jsonl`` (one absolute path per line as a JSON string, so that any file name, even one
with a newline, round-trips) and ``manifest.json`` (features, model, working size, scales, system
settings, advquery version), so it refuses queries described otherwise. The manifest also holds a
digest of all the files: an index whose files were damaged, edited or mixed up is refused.

An IVF-PQ index (:class:`IVFPQ`, neural descriptors only) also holds ``ivfpq.faiss``, a trained faiss
``IndexIVFPQ`` over the same rows (inner product); the manifest's ``index`` entry records its
parameters. A search probes ``nprobe`` of its inverted lists and optionally re-ranks a shortlist of
its candidates exactly with ``descriptors.npy``. A flat index (the default) has no such entry and its
files are what they were before IVF-PQ existed.
"""
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import faiss
import numpy as np

from . import __version__
from .io import atomic_write, remove_stale_temporaries

DESCRIPTORS, IMAGES, MANIFEST = "descriptors.npy", "images.jsonl", "manifest.json"
ANN_FILE = "ivfpq.faiss"  # the trained IVF-PQ index of an index directory built with index type 'ivfpq'
INDEX_TYPES = ("flat", "ivfpq")
PQ_BITS = 8  # bits per sub-vector code: 256 centroids per sub-quantizer
MIN_ROWS_PER_LIST = 39  # faiss k-means asks for at least this many training rows per centroid
SUB_VECTOR_DIMS = 16  # default product quantizer: one byte per 16 dimensions
TRAIN_ROWS_PER_LIST, MIN_TRAIN_ROWS = 64, 10_000  # training sample: 64 rows per list, at least 10,000 (or all)
DEFAULT_NPROBE = 16  # inverted lists probed per query unless asked otherwise
DEFAULT_RERANK = 100  # IVF-PQ candidates re-ranked exactly unless asked otherwise


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
    index: dict | None = None  # None: exact (flat) search; else the IVF-PQ parameters (:meth:`IVFPQ.settings`)

    def to_json(self) -> dict:
        """The manifest as saved (and digested); a flat index has no ``index`` entry, as before IVF-PQ."""
        meta = asdict(self)
        if meta["index"] is None:
            del meta["index"]
        return meta

    @classmethod
    def from_json(cls, meta: object) -> "Manifest":
        """The manifest a ``manifest.json`` describes; ValueError naming the first field that is
        missing or of the wrong type."""
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, found {type(meta).__name__}")
        checks = {"model": (str, "a string"), "size": (int, "a positive integer"), "dim": (int, "a positive integer"),
                  "count": (int, "a positive integer"), "version": (str, "a string"), "features": (str, "a string"),
                  "settings": (dict, "an object"), "scales": (list, "a list of positive numbers"),
                  "index": (dict, "an object")}
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


class IVFPQ:
    """How an IVF-PQ index over ``count`` rows of ``dim`` dimensions is built: ``nlist`` inverted lists (coarse
    k-means centroids) and a product quantizer of ``pq`` sub-vectors coded on 8 bits, both trained by inner
    product (descriptors are L2-normalised) on a seeded sample of ``train_size`` rows: 64 per list, at least
    10,000, at most all of them. A row then costs ``pq`` bytes of code (and an 8-byte id) instead of 4 x ``dim``
    bytes; the rows themselves stay beside it for exact re-ranking.

    Defaults: ``nlist`` about 4 sqrt(count), at most count / 39 (faiss's k-means wants 39 training rows per
    centroid); ``pq`` the largest divisor of ``dim`` up to dim / 16 (a byte per 16 dimensions). Settings that
    cannot be trained raise ValueError with one line saying why."""

    def __init__(self, dim: int, count: int, nlist: int | None = None, pq: int | None = None, seed: int = 0):
        for name, value, low in (("dim", dim, 1), ("count", count, 1), ("nlist", nlist, 1), ("pq", pq, 1),
                                 ("seed", seed, 0)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                                      or value < low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if count < 2 ** PQ_BITS:
            raise ValueError(f"IVF-PQ needs at least {2 ** PQ_BITS} images to train its product quantizer "
                             f"({2 ** PQ_BITS} centroids per sub-vector), found {count}: use the flat index")
        most = count // MIN_ROWS_PER_LIST
        nlist = min(max(1, round(4 * math.sqrt(count))), most) if nlist is None else int(nlist)
        if nlist > most:
            raise ValueError(f"nlist {nlist} needs at least {MIN_ROWS_PER_LIST * nlist} images to train its centroids "
                             f"({MIN_ROWS_PER_LIST} per list), found {count}: at most nlist {most}")
        divisors = [m for m in range(1, dim + 1) if dim % m == 0]
        pq = max(m for m in divisors if m <= max(1, dim // SUB_VECTOR_DIMS)) if pq is None else int(pq)
        if dim % pq:
            raise ValueError(f"pq {pq} does not divide the descriptor dimension {dim} "
                             f"(divisors: {', '.join(map(str, divisors))})")
        self.dim, self.count, self.nlist, self.pq, self.seed = int(dim), int(count), nlist, pq, int(seed)
        self.train_size = min(self.count, max(TRAIN_ROWS_PER_LIST * nlist, MIN_TRAIN_ROWS))

    def settings(self) -> dict:
        """The manifest's ``index`` entry: what the index file was built with."""
        return {"type": "ivfpq", "file": ANN_FILE, "metric": "inner product", "nlist": self.nlist, "pq": self.pq,
                "bits": PQ_BITS, "train_size": self.train_size, "seed": self.seed}

    def train(self, rows: np.ndarray) -> faiss.Index:
        """An empty IVF-PQ index trained on ``train_size`` rows of ``rows`` drawn with ``seed`` (all of them
        when there are fewer): the common start of a single-process index (:meth:`build`) and of shards
        (:func:`fill_shard`) that :func:`merge_shards` joins."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of {self.dim} dimensions, got shape {rows.shape}")
        take = min(self.train_size, len(rows))
        sample = np.sort(np.random.default_rng(self.seed).choice(len(rows), take, replace=False))
        index = faiss.index_factory(self.dim, f"IVF{self.nlist},PQ{self.pq}x{PQ_BITS}", faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.min_points_per_centroid = 1  # at least 256 rows were checked; no warning on stderr below 9,984
        index.do_polysemous_training = False  # the factory's default: slow, and only for Hamming filtering, unused
        faiss.extract_index_ivf(index).cp.seed = index.pq.cp.seed = self.seed  # k-means starts drawn with the seed too
        index.train(np.ascontiguousarray(rows[sample], dtype=np.float32))
        return index

    def build(self, rows: np.ndarray,
              fill: Callable[[faiss.Index, np.ndarray], faiss.Index] | None = None) -> faiss.Index:
        """The IVF-PQ index of all ``count`` rows (ids = row numbers), trained on a sample of them and filled
        by ``fill(trained, rows)``: :func:`fill_shard` in this process (the default), or shards of consecutive
        rows filled elsewhere and joined in order by :func:`merge_shards` (``index build --ray``)."""
        if len(rows) != self.count:
            raise ValueError(f"expected {self.count} rows, got {len(rows)}")
        return (fill or fill_shard)(self.train(rows), rows)


def fill_shard(trained: faiss.Index, rows: np.ndarray) -> faiss.Index:
    """A copy of the trained, empty IVF-PQ index ``trained`` (:meth:`IVFPQ.train`) holding ``rows`` as ids
    0..len(rows)-1: one worker's shard for :func:`merge_shards`, or with all rows a whole index."""
    if trained.ntotal:
        raise ValueError(f"the trained index must be empty, it holds {trained.ntotal} rows")
    shard = faiss.clone_index(trained)
    shard.add(np.ascontiguousarray(rows, dtype=np.float32))
    return shard


def _shard_problem(first: faiss.Index, other: faiss.Index) -> str | None:
    """Why ``other`` cannot be merged into ``first`` (not built from the same trained index), or None."""
    a, b = faiss.downcast_index(first), faiss.downcast_index(other)
    if not (isinstance(a, faiss.IndexIVFPQ) and isinstance(b, faiss.IndexIVFPQ)):
        return f"expected IVF-PQ indexes, got {type(a).__name__} and {type(b).__name__}"
    if (a.d, a.nlist, a.pq.M, a.pq.nbits, a.metric_type) != (b.d, b.nlist, b.pq.M, b.pq.nbits, b.metric_type):
        return "built with other parameters (dimension, nlist, pq, bits or metric)"

    def centroids(index) -> np.ndarray:
        return faiss.rev_swig_ptr(faiss.downcast_index(index.quantizer).get_xb(), index.nlist * index.d)

    if not (np.array_equal(centroids(a), centroids(b))
            and np.array_equal(faiss.vector_to_array(a.pq.centroids), faiss.vector_to_array(b.pq.centroids))):
        return "trained separately (other coarse centroids or product quantizer): fill copies of one trained index"
    return None


def merge_shards(shards: Sequence[faiss.Index]) -> faiss.Index:
    """One IVF-PQ index holding the rows of ``shards`` in order, row j of shard i under id (rows of the shards
    before it) + j, as one process adding all rows in that order holds them: the shards share the trained
    quantizers, so each row gets the list and code the single add gives it, up to float rounding (faiss's
    distance kernels vary with batch size and threads, so a row on the border of two lists or codes may fall on
    the other side elsewhere; the tests find the same bytes). Every shard is a copy of the same trained index
    filled with its own rows as ids 0..n-1 (:func:`fill_shard`); ValueError (naming the shard) otherwise. The
    first shard is copied; faiss moves the others' lists, leaving them empty. Shards pickle (e.g. from workers)."""
    if not shards:
        raise ValueError("no shards to merge")
    merged = faiss.clone_index(shards[0])
    for i, shard in enumerate(shards[1:], 1):
        problem = _shard_problem(merged, shard)
        if problem:
            raise ValueError(f"shard {i}: {problem}")
        merged.merge_from(shard, merged.ntotal)
    return merged


def search_ivfpq(ann: faiss.Index, database: np.ndarray, queries: np.ndarray, k: int, nprobe: int = DEFAULT_NPROBE,
                 rerank: int = DEFAULT_RERANK) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, k), best first, from the IVF-PQ index ``ann`` probing ``nprobe`` lists.
    With ``rerank`` > 0 the max(k, rerank) best candidates are re-ranked by their exact inner product with
    their ``database`` rows (the scores are then exact), else the scores are the product quantizer's estimates.
    Where the probed lists hold fewer than k rows, the missing places have id -1 and score -inf."""
    ivf = faiss.extract_index_ivf(ann)
    if not 1 <= nprobe <= ivf.nlist:
        raise ValueError(f"nprobe must be in 1..{ivf.nlist} (the index has {ivf.nlist} lists), got {nprobe}")
    if k < 1 or rerank < 0:
        raise ValueError(f"need k >= 1 and rerank >= 0, got k={k}, rerank={rerank}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    shortlist = max(1, min(max(k, rerank), ann.ntotal))
    scores, ids = ann.search(queries, shortlist, params=faiss.SearchParametersIVF(nprobe=nprobe))
    scores = np.where(ids < 0, -np.inf, scores)
    if rerank:
        for q, found in enumerate(ids):
            valid = found >= 0
            scores[q, valid] = database[found[valid]].astype(np.float32, copy=False) @ queries[q]
        order = np.argsort(-scores, axis=1, kind="stable")
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    return scores[:, :k], ids[:, :k]


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


def _digest(manifest: "Manifest", paths: list[Path], rows: np.ndarray, ann: bytes | None = None) -> str:
    h = hashlib.sha256(json.dumps(manifest.to_json(), sort_keys=True).encode())
    h.update(json.dumps([str(p) for p in paths]).encode())
    h.update(f"{rows.dtype.str}{rows.shape}".encode())
    h.update(np.ascontiguousarray(rows).tobytes())
    if ann is not None:  # the IVF-PQ file; a flat index's digest is what it was before IVF-PQ
        h.update(ann)
    return h.hexdigest()


def _image_lines(paths: list[Path]) -> bytes:
    # ensure_ascii: newlines, line separators and undecodable bytes of file names are escaped
    return "".join(json.dumps(str(p)) + "\n" for p in paths).encode("ascii")


@dataclass
class ImageIndex:
    """Descriptors of a set of images with the manifest that makes them comparable, and for an IVF-PQ
    index (``manifest.index`` set) the trained faiss index ``ann`` over the same rows."""

    descriptors: np.ndarray
    paths: list[Path]
    manifest: Manifest
    ann: faiss.Index | None = None

    def __post_init__(self) -> None:
        if (self.ann is None) != (self.manifest.index is None):
            raise ValueError("an IVF-PQ index needs both its faiss index and its manifest entry, a flat one neither")
        if self.ann is not None and (self.ann.ntotal, self.ann.d) != self.descriptors.shape:
            raise ValueError(f"the IVF-PQ index holds {self.ann.ntotal} x {self.ann.d}, the descriptors are "
                             f"{self.descriptors.shape}")

    def save(self, directory: Path) -> None:
        """Write the index files atomically, all or none: each is written in full beside its target before
        any replaces it (the manifest last, so a complete manifest means a complete index). Leftovers of a
        killed earlier save are removed first, and the IVF-PQ file of an index this one replaces after."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(directory)
        rows = self.descriptors.astype(np.float32) if self.descriptors.dtype.kind == "f" else self.descriptors
        ann = None if self.ann is None else faiss.serialize_index(self.ann).tobytes()
        meta = {**self.manifest.to_json(), "digest": _digest(self.manifest, self.paths, rows, ann)}
        # Replaced in reverse order of opening when the block ends: the IVF-PQ file, descriptors, images, manifest.
        with ExitStack() as files:
            manifest, images, descriptors = (files.enter_context(atomic_write(directory / name))
                                             for name in (MANIFEST, IMAGES, DESCRIPTORS))
            written = [descriptors, images, manifest]
            if ann is not None:
                written.insert(0, files.enter_context(atomic_write(directory / ANN_FILE)))
                written[0].write(ann)
            np.save(descriptors, rows)
            images.write(_image_lines(self.paths))
            manifest.write(json.dumps(meta, indent=2).encode())
            for f in written:
                f.flush()  # a full disk fails here, before anything is replaced
        if ann is None:
            (directory / ANN_FILE).unlink(missing_ok=True)  # belonged to the index replaced

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
        except RecursionError:
            raise damaged(f"{MANIFEST}: not valid JSON (nested too deeply)") from None
        if not isinstance(digest, str):
            raise damaged(f"{MANIFEST} has no digest (an index from an older advquery: build it again)")
        if manifest.index is not None and manifest.index.get("type") != "ivfpq":
            raise damaged(f"{MANIFEST}: unknown index type {manifest.index.get('type')!r} (expected one of {INDEX_TYPES})")
        try:
            rows = np.load(directory / DESCRIPTORS, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise damaged(f"{DESCRIPTORS} cannot be read ({str(exc) or 'empty file'})") from None
        try:
            paths = [Path(json.loads(line)) for line in (directory / IMAGES).read_text(encoding="ascii").split("\n")[:-1]]
        except (OSError, ValueError, TypeError) as exc:
            raise damaged(f"{IMAGES} cannot be read ({exc})") from None
        except RecursionError:
            raise damaged(f"{IMAGES} cannot be read (a line nested too deeply)") from None
        try:
            ann_bytes = None if manifest.index is None else (directory / ANN_FILE).read_bytes()
        except OSError as exc:
            raise damaged(f"{ANN_FILE} cannot be read ({exc.strerror or exc})") from None
        if rows.ndim != 2 or rows.shape != (manifest.count, manifest.dim) or len(paths) != manifest.count:
            raise damaged(f"the manifest says {manifest.count} x {manifest.dim}, found {rows.shape} descriptors "
                          f"and {len(paths)} paths")
        problem = check_rows(rows, manifest.count)
        if problem:
            raise damaged(f"{DESCRIPTORS}: {problem}")
        if _digest(manifest, paths, rows, ann_bytes) != digest:
            names = [MANIFEST, IMAGES, DESCRIPTORS] + ([ANN_FILE] if ann_bytes is not None else [])
            raise damaged(f"{', '.join(names[:-1])} and {names[-1]} do not match the digest they were saved with "
                          "(a file was edited or comes from another index)")
        ann = None if ann_bytes is None else _read_ann(ann_bytes, manifest, damaged)
        return cls(rows, paths, manifest, ann)

    def search(self, queries: np.ndarray, k: int = 10, ranker: Callable = rank, nprobe: int | None = None,
               rerank: int | None = None) -> list[list[tuple[Path, float]]]:
        """The k best (path, score) pairs for each row of ``queries`` (n, D), ranked by inner product or by
        ``ranker(database, queries, k) -> (scores, ids)`` (a retrieval system's ``rank``). An IVF-PQ index
        is searched with :func:`search_ivfpq` (``nprobe`` lists, default 16 or all if fewer; ``rerank``
        candidates re-ranked exactly, default 100, 0 for none); a flat one refuses ``nprobe`` and ``rerank``."""
        if self.ann is None:
            if nprobe is not None or rerank is not None:
                raise ValueError("nprobe and rerank apply to an IVF-PQ index; this one is flat (exact search)")
            scores, ids = ranker(self.descriptors, queries, k)
        else:
            nprobe = min(DEFAULT_NPROBE, self.manifest.index["nlist"]) if nprobe is None else nprobe
            scores, ids = search_ivfpq(self.ann, self.descriptors, queries, k, nprobe,
                                       DEFAULT_RERANK if rerank is None else rerank)
        return [[(self.paths[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0] for row_s, row_i in zip(scores, ids)]


def _read_ann(data: bytes, manifest: Manifest, damaged: Callable[[str], IndexFileError]) -> faiss.Index:
    """The IVF-PQ index in ``data`` (bytes that passed the digest), checked against the manifest."""
    try:
        ann = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise damaged(f"{ANN_FILE} cannot be read ({str(exc).splitlines()[0]})") from None
    entry = manifest.index
    ivf = faiss.downcast_index(ann)
    found = (ivf.ntotal, ivf.d, getattr(ivf, "nlist", None), getattr(getattr(ivf, "pq", None), "M", None))
    if not isinstance(ivf, faiss.IndexIVFPQ) or found != (manifest.count, manifest.dim, entry.get("nlist"), entry.get("pq")):
        raise damaged(f"{ANN_FILE} holds {type(ivf).__name__} of rows, dimension, nlist, pq {found}; the manifest says "
                      f"{(manifest.count, manifest.dim, entry.get('nlist'), entry.get('pq'))}")
    return ann
