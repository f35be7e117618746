"""SIFT bag of visual words with Hamming Embedding: the PIRE paper's local-feature system (4.1).

H. Jégou, M. Douze, C. Schmid, "Hamming embedding and weak geometric consistency for large scale
image search", ECCV 2008 (HE); scoring as in their "Improving bag-of-features for large scale image
search", IJCV 2010. Choices:

- SIFT: OpenCV's detector and descriptor on the grey image at the working size (long side, default
  1024 as the neural system; bounding-box queries cropped as :func:`advquery.extraction.prepare`
  crops them). At most ``max_features`` keypoints per image, the strongest by detector response
  (default 3,000; roxford5k-mini photos give a median of about 4,800 at 1024 px), which bounds the
  cost of word assignment and of the inverted file.
- RootSIFT (Arandjelović and Zisserman, CVPR 2012: L1-normalise, square root), on by default: the
  Euclidean vocabulary then compares descriptors by the Hellinger kernel, a standard gain for
  SIFT retrieval. A vocabulary records whether it was trained on RootSIFT and encodes accordingly.
- Vocabulary: faiss k-means, default 20,000 words (the paper), 10 iterations, on a seeded uniform
  sample of at most 500,000 of the training descriptors (all of them when fewer).
- HE: a random orthogonal projection P (64 x 128: rows of Q from the QR of a seeded Gaussian
  matrix) and, per word, the median of each projected component over the training descriptors of
  that word. Bit i of a descriptor's signature is ``(P x)_i > median_i(word)``; 64 bits pack into
  one uint64.
- Matching: descriptors match when they share the word and their signatures differ in at most 24
  bits (``threshold``). A match weighs ``exp(-h^2 / sigma^2)``, sigma 16 (the Gaussian weighting of
  the IJCV paper), times ``idf(word)^2``, ``idf = log(N / N_word)`` over the N database images. An
  image's score sums its matches and divides by the L2 norms of the query's and the image's tf-idf
  bag-of-words vectors: with every pair matching at weight 1 it is the tf-idf cosine similarity.
"""
import hashlib
import json
import zipfile
import zlib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import cv2
import faiss
import numpy as np

from ..extraction import DEFAULT_SIZE, Box, prepare_rgb
from ..io import atomic_write

DEFAULT_WORDS = 20_000
DEFAULT_MAX_FEATURES = 3_000
DEFAULT_SAMPLE = 500_000
DEFAULT_ITERATIONS = 10
DEFAULT_THRESHOLD = 24
DEFAULT_SIGMA = 16.0
BITS = 64
PAD = np.iinfo(np.uint64).max  # an empty slot in the fixed-width row layout (see :func:`pack`)
_PAIRS_PER_CHUNK = 1 << 22  # bounds the memory of one vectorised search step


class VocabularyError(ValueError):
    """A vocabulary cannot be trained or read; the message says why."""


class Bag(NamedTuple):
    """The local features of one image: visual word (int64) and HE signature (uint64) per descriptor."""

    words: np.ndarray
    signatures: np.ndarray


def sift(rgb: np.ndarray, max_features: int = DEFAULT_MAX_FEATURES) -> np.ndarray:
    """(m, 128) uint8 SIFT descriptors of an (H, W, 3) uint8 image, its ``m <= max_features`` strongest keypoints."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=max_features).detectAndCompute(grey, None)
    if descriptors is None:
        return np.zeros((0, 128), np.uint8)
    strongest = np.argsort([-k.response for k in keypoints], kind="stable")[:max_features]
    return descriptors[strongest].astype(np.uint8)  # OpenCV's float descriptors hold integers 0..255


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT: the square root of the L1-normalised descriptor (unit L2 norm), float32."""
    d = descriptors.astype(np.float32)
    return np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-12))


def random_projection(seed: int, bits: int = BITS, dim: int = 128) -> np.ndarray:
    """(bits, dim) float32 with orthonormal rows: the first rows of Q from the QR of a seeded Gaussian matrix."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q[:bits].astype(np.float32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between uint64 signatures (broadcast)."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def match_weights(distances, threshold: int = DEFAULT_THRESHOLD, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """Weight of descriptor pairs at Hamming ``distances``: ``exp(-h^2 / sigma^2)`` up to ``threshold``, else 0."""
    h = np.asarray(distances, np.float64)
    return np.where(h <= threshold, np.exp(-(h / sigma) ** 2), 0.0)


def sample_rows(arrays: Sequence[np.ndarray], n: int, seed: int = 0) -> np.ndarray:
    """A uniform sample of at most ``n`` rows of the arrays stacked (all rows when fewer), seeded."""
    counts = np.array([len(a) for a in arrays], np.int64)
    if counts.sum() <= n:
        return np.concatenate(arrays) if len(arrays) else np.zeros((0, 128), np.uint8)
    ends = np.cumsum(counts)
    picks = np.sort(np.random.default_rng(seed).choice(ends[-1], n, replace=False))
    bounds = np.searchsorted(picks, np.concatenate([[0], ends]))  # the picks falling in each array
    return np.concatenate([a[picks[lo:hi] - start] for a, lo, hi, start in zip(arrays, bounds, bounds[1:], ends - counts)])


def _word_medians(projected: np.ndarray, words: np.ndarray, k: int) -> np.ndarray:
    """(k, bits) per-word medians of the projected descriptors; words without any take the overall median."""
    order = np.argsort(words, kind="stable")
    sorted_words, sorted_rows = words[order], projected[order]
    bounds = np.searchsorted(sorted_words, np.arange(k + 1))
    medians = np.tile(np.median(projected, axis=0), (k, 1)).astype(np.float32)
    for w in np.flatnonzero(np.diff(bounds)):
        medians[w] = np.median(sorted_rows[bounds[w]:bounds[w + 1]], axis=0)
    return medians


class Vocabulary:
    """Visual words (k-means centroids), the HE projection and per-word medians: what a database and
    its queries must share.

    Saved as one ``.npz`` (arrays and a JSON ``settings`` string), written atomically.
    """

    def __init__(self, centroids: np.ndarray, projection: np.ndarray, medians: np.ndarray, root_sift: bool = True,
                 info: dict | None = None):
        self.centroids = np.ascontiguousarray(centroids, np.float32)
        self.projection = np.ascontiguousarray(projection, np.float32)
        self.medians = np.ascontiguousarray(medians, np.float32)
        self.root_sift = bool(root_sift)
        self.info = dict(info or {})  # provenance: training sample, iterations, seed

    @property
    def words(self) -> int:
        return len(self.centroids)

    @classmethod
    def train(cls, descriptors: Sequence[np.ndarray], words: int = DEFAULT_WORDS, sample: int = DEFAULT_SAMPLE,
              seed: int = 0, iterations: int = DEFAULT_ITERATIONS, root_sift: bool = True) -> "Vocabulary":
        """Train on a seeded sample of at most ``sample`` rows of per-image (m, 128) uint8 SIFT descriptors."""
        x = cls._space(sample_rows(descriptors, sample, seed), root_sift)
        if len(x) < words:
            raise VocabularyError(f"{len(x)} SIFT descriptors cannot train {words} visual words; "
                                  "use a smaller vocabulary or more training images")
        kmeans = faiss.Kmeans(x.shape[1], words, niter=iterations, seed=seed, min_points_per_centroid=1)
        kmeans.train(x)
        projection = random_projection(seed)
        medians = _word_medians(x @ projection.T, kmeans.index.search(x, 1)[1][:, 0], words)
        return cls(kmeans.centroids, projection, medians, root_sift,
                   {"descriptors": len(x), "iterations": iterations, "seed": seed})

    @staticmethod
    def _space(descriptors: np.ndarray, root: bool) -> np.ndarray:
        return root_sift(descriptors) if root else descriptors.astype(np.float32)

    @cached_property
    def _quantiser(self) -> faiss.IndexFlatL2:
        index = faiss.IndexFlatL2(self.centroids.shape[1])
        index.add(self.centroids)
        return index

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Nearest word (int64) of each float32 descriptor row in the vocabulary's space."""
        if not len(x):
            return np.zeros(0, np.int64)
        return self._quantiser.search(np.ascontiguousarray(x, np.float32), 1)[1][:, 0]

    def signatures(self, x: np.ndarray, words: np.ndarray) -> np.ndarray:
        """64-bit HE signatures (uint64) of descriptor rows ``x`` assigned to ``words``."""
        bits = (x @ self.projection.T) > self.medians[words]
        return np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(-1)

    def encode(self, descriptors: np.ndarray) -> Bag:
        """The bag (words, signatures) of one image's (m, 128) uint8 SIFT descriptors."""
        x = self._space(descriptors, self.root_sift)
        words = self.assign(x)
        return Bag(words, self.signatures(x, words))

    @cached_property
    def digest(self) -> str:
        """Short hash of what encoding depends on (arrays and the RootSIFT flag)."""
        h = hashlib.sha256(str(self.root_sift).encode())
        for a in (self.centroids, self.projection, self.medians):
            h.update(a.tobytes())
        return h.hexdigest()[:16]

    def settings(self) -> dict:
        """JSON-ready description: size, RootSIFT, digest and provenance."""
        return {"words": self.words, "bits": BITS, "root_sift": self.root_sift, "digest": self.digest, **self.info}

    def save(self, path: Path) -> None:
        with atomic_write(path) as f:
            np.savez(f, centroids=self.centroids, projection=self.projection, medians=self.medians,
                     settings=np.array(json.dumps(self.settings())))

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        """The vocabulary saved at ``path``; VocabularyError ``"PATH: why"`` for a file that is not one (empty,
        truncated, another kind of file, settings that are not a JSON object) or does not match its digest."""
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise TypeError("a single array (.npy), not an archive of arrays (.npz)")
            with z:
                settings = json.loads(str(z["settings"]))
                if not isinstance(settings, dict):
                    raise TypeError(f"its settings are not a JSON object: {str(z['settings'])[:60]}")
                vocabulary = cls(z["centroids"], z["projection"], z["medians"], settings["root_sift"],
                                 {k: v for k, v in settings.items() if k not in ("words", "bits", "root_sift", "digest")})
        except (OSError, ValueError, KeyError, EOFError, TypeError, RecursionError, zipfile.BadZipFile,
                zlib.error) as exc:
            raise VocabularyError(f"{path}: not a readable SIFT-HE vocabulary ({str(exc) or 'empty file'})") from None
        if vocabulary.digest != settings.get("digest") or vocabulary.medians.shape != (vocabulary.words, BITS):
            raise VocabularyError(f"{path}: damaged SIFT-HE vocabulary (contents do not match its settings)")
        return vocabulary


def pack(bags: Sequence[Bag], width: int) -> np.ndarray:
    """Fixed-width rows (n, 2 * width) uint64: words (PAD-filled), then signatures, ``width`` slots each."""
    rows = np.full((len(bags), 2 * width), PAD, np.uint64)
    for row, bag in zip(rows, bags):
        m = len(bag.words)
        if m > width:
            raise ValueError(f"{m} descriptors do not fit in {width} slots")
        row[:m], row[width:width + m] = bag.words, bag.signatures
    return rows


def unpack(row: np.ndarray) -> Bag:
    """The bag of one row of :func:`pack`."""
    width = len(row) // 2
    m = int(np.count_nonzero(row[:width] != PAD))
    return Bag(row[:m].astype(np.int64), row[width:width + m])


class SiftHE:
    """SIFT-HE retrieval with a trained vocabulary: describes images, keeps an inverted file of the
    added ones (per word: image ids and signatures) and scores queries against all of them."""

    def __init__(self, vocabulary: Vocabulary, size: int = DEFAULT_SIZE, max_features: int = DEFAULT_MAX_FEATURES,
                 threshold: int = DEFAULT_THRESHOLD, sigma: float = DEFAULT_SIGMA):
        if not 0 <= threshold <= BITS:
            raise ValueError(f"Hamming threshold must be in 0..{BITS}, got {threshold}")
        self.vocabulary, self.size, self.max_features = vocabulary, size, max_features
        self._weights = match_weights(np.arange(BITS + 1), threshold, sigma)
        self._bags: list[Bag] = []
        self._inverted = None

    def describe(self, rgb: np.ndarray, box: Box | None = None) -> Bag:
        """The bag of an (H, W, 3) uint8 image at the working size (cropped to ``box`` first if given)."""
        return self.vocabulary.encode(sift(prepare_rgb(rgb, self.size, box), self.max_features))

    def add(self, bag: Bag) -> int:
        """Add an image to the database; returns its id (0, 1, ...: the order of the scores)."""
        self._bags.append(bag)
        self._inverted = None
        return len(self._bags) - 1

    def __len__(self) -> int:
        return len(self._bags)

    def _index(self):
        """The inverted file (built on first search after an add): postings sorted by word with per-word
        offsets, the idf of each word and the tf-idf norm of each image."""
        if self._inverted is None:
            n, k = len(self._bags), self.vocabulary.words
            words = np.concatenate([np.zeros(0, np.int64), *(b.words for b in self._bags)])
            signatures = np.concatenate([np.zeros(0, np.uint64), *(b.signatures for b in self._bags)])
            ids = np.repeat(np.arange(n), [len(b.words) for b in self._bags]).astype(np.int64)
            order = np.argsort(words, kind="stable")
            pairs, tf = np.unique(words * n + ids, return_counts=True)  # (word, image) with its term frequency
            pair_words, pair_ids = np.divmod(pairs, max(n, 1))
            df = np.bincount(pair_words, minlength=k)
            idf = np.log(n / np.maximum(df, 1)) * (df > 0)
            norms = np.sqrt(np.bincount(pair_ids, weights=(tf * idf[pair_words]) ** 2, minlength=n))
            offsets = np.searchsorted(words[order], np.arange(k + 1))
            self._inverted = (offsets, ids[order], signatures[order], idf, norms)
        return self._inverted

    def search(self, query: Bag) -> np.ndarray:
        """Scores (n_db,) of the query against every added image, higher is better (0: nothing matched)."""
        offsets, ids, signatures, idf, norms = self._index()
        scores = np.zeros(len(self._bags))
        words, tf = np.unique(query.words, return_counts=True)
        query_norm = np.sqrt(np.sum((tf * idf[words]) ** 2)) if len(words) else 0.0
        if query_norm == 0:
            return scores
        starts, lengths = offsets[query.words], offsets[query.words + 1] - offsets[query.words]
        cuts = np.searchsorted(np.cumsum(lengths), np.arange(_PAIRS_PER_CHUNK, lengths.sum(), _PAIRS_PER_CHUNK))
        for chunk in np.split(np.arange(len(query.words)), cuts):
            n = lengths[chunk]
            query_row = np.repeat(chunk, n)  # every (query descriptor, posting of its word) pair
            posting = np.repeat(starts[chunk] - np.cumsum(n) + n, n) + np.arange(n.sum())
            weight = self._weights[hamming(query.signatures[query_row], signatures[posting])]
            scores += np.bincount(ids[posting], weights=weight * idf[query.words[query_row]] ** 2,
                                  minlength=len(scores))
        return scores / (query_norm * np.where(norms > 0, norms, np.inf))
