"""SIFT bag of words with Hamming Embedding: signatures, matching rule, vocabulary, retrieval."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advquery.extraction import prepare, prepare_rgb
from advquery.handcrafted.sift_he import (BITS, Bag, SiftHE, Vocabulary, VocabularyError, hamming, match_weights,
                                          pack, random_projection, sift, unpack)
from advquery.io import to_tensor
from advquery.cache import CacheWarning
from advquery.systems import SiftHESystem


def _scene(seed: int, size: int = 256) -> np.ndarray:
    """A synthetic photo: random coloured rectangles and discs on a smooth gradient (plenty of SIFT keypoints)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.repeat(((xx + yy) * 255 / (2 * size))[..., None], 3, axis=2)
    for _ in range(40):
        x, y = rng.integers(0, size - 8, 2)
        w, h = rng.integers(6, size // 4, 2)
        colour = rng.integers(0, 256, 3)
        if rng.random() < 0.5:
            img[y:y + h, x:x + w] = colour
        else:
            img[(xx - x) ** 2 + (yy - y) ** 2 < (w // 2) ** 2] = colour
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def random_vocabulary() -> tuple[Vocabulary, list[np.ndarray]]:
    """A 16-word vocabulary trained on random SIFT-like descriptors, with its training data."""
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, (500, 128)).astype(np.uint8) for _ in range(8)]
    return Vocabulary.train(data, words=16, seed=3), data


@pytest.mark.parametrize("box", [None, (10.4, 20, 90.6, 61)])
def test_prepare_rgb_crops_and_scales_as_the_neural_prepare(box):
    rgb = _scene(0)[:, :200]  # 256 x 200
    out = prepare_rgb(rgb, 128, box)
    reference = prepare(to_tensor(rgb), 128, box)
    assert out.dtype == np.uint8 and out.shape == (*reference.shape[-2:], 3)
    assert np.abs(out.astype(float) - reference[0].permute(1, 2, 0).numpy() * 255).mean() < 3  # PIL vs torch resize
    np.testing.assert_array_equal(prepare_rgb(rgb, 256), rgb)  # already at the working size


def test_projection_is_orthogonal_and_seeded():
    p = random_projection(seed=5)
    assert p.shape == (BITS, 128) and p.dtype == np.float32
    np.testing.assert_allclose(p @ p.T, np.eye(BITS), atol=1e-5)
    np.testing.assert_array_equal(p, random_projection(seed=5))
    assert not np.allclose(p, random_projection(seed=6))


def test_signatures_are_64_bit_and_balanced_on_training_data(random_vocabulary):
    vocabulary, data = random_vocabulary
    bags = [vocabulary.encode(d) for d in data]
    signatures = np.concatenate([b.signatures for b in bags])
    assert signatures.dtype == np.uint64 and signatures.shape == (4000,)
    assert all(b.words.dtype == np.int64 and len(b.words) == 500 and b.words.max() < 16 for b in bags)
    bits = np.unpackbits(signatures.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    assert bits.shape == (4000, BITS)
    # Per-word medians split every component of every word in half: ~50 % ones for each of the 64 bits.
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.02)


def test_hamming_threshold_and_weights():
    a = np.uint64(0)
    at_24, at_25 = np.uint64((1 << 24) - 1), np.uint64((1 << 25) - 1)
    assert hamming(a, at_24) == 24 and hamming(a, at_25) == 25 and hamming(a, np.uint64(2 ** 64 - 1)) == 64
    w = match_weights([0, 16, 24, 25, 64])
    np.testing.assert_allclose(w, [1, np.exp(-1), np.exp(-(24 / 16) ** 2), 0, 0])
    assert match_weights(25, threshold=25) > 0


def _word0_index(threshold: int = 24) -> SiftHE:
    """Three images: word 0 at 24 bits and at 25 bits from the zero signature, and another word."""
    index = SiftHE(Vocabulary(np.eye(2, 128), random_projection(0), np.zeros((2, BITS))), threshold=threshold)
    for word, signature in ((0, (1 << 24) - 1), (0, (1 << 25) - 1), (1, 0)):
        index.add(Bag(np.array([word]), np.array([signature], np.uint64)))
    return index


def test_search_matches_within_threshold_only_with_idf_and_norms():
    query = Bag(np.array([0]), np.array([0], np.uint64))
    near, far, other = _word0_index().search(query)
    # One match of weight exp(-(24/16)^2) idf^2, divided by the two tf-idf norms (idf each): the weight itself.
    assert near == pytest.approx(np.exp(-(24 / 16) ** 2))
    assert far == 0 and other == 0
    assert _word0_index(threshold=23).search(query)[0] == 0
    assert _word0_index(threshold=25).search(query)[1] > 0


def test_pack_round_trip():
    bags = [Bag(np.array([3, 1, 3]), np.array([5, 2 ** 64 - 1, 0], np.uint64)), Bag(np.zeros(0, np.int64),
                                                                                      np.zeros(0, np.uint64))]
    rows = pack(bags, 4)
    assert rows.shape == (2, 8) and rows.dtype == np.uint64
    for bag, row in zip(bags, rows):
        back = unpack(row)
        np.testing.assert_array_equal(back.words, bag.words)
        np.testing.assert_array_equal(back.signatures, bag.signatures)
    with pytest.raises(ValueError):
        pack(bags, 2)


def test_vocabulary_save_load(random_vocabulary, tmp_path):
    vocabulary, data = random_vocabulary
    vocabulary.save(tmp_path / "v.npz")
    back = Vocabulary.load(tmp_path / "v.npz")
    assert back.digest == vocabulary.digest and back.settings() == vocabulary.settings()
    assert back.settings()["iterations"] == 10 and back.root_sift
    np.testing.assert_array_equal(back.encode(data[0]).signatures, vocabulary.encode(data[0]).signatures)
    (tmp_path / "bad.npz").write_bytes(b"not a vocabulary")
    with pytest.raises(VocabularyError, match="bad.npz"):
        Vocabulary.load(tmp_path / "bad.npz")
    with pytest.raises(VocabularyError, match="cannot train 4000"):
        Vocabulary.train(data[:1], words=4000)


def _damage_vocabulary(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif how == "settings a list":
        arrays = dict(np.load(path))
        with path.open("wb") as f:
            np.savez(f, **{**arrays, "settings": np.array(json.dumps([1, 2]))})
    elif how == "an array file":
        with path.open("wb") as f:
            np.save(f, np.zeros(3))


@pytest.mark.parametrize("how", ["empty", "truncated", "settings a list", "an array file"])
def test_unreadable_vocabulary_is_one_error_naming_the_file(random_vocabulary, tmp_path, how):
    random_vocabulary[0].save(tmp_path / "v.npz")
    _damage_vocabulary(tmp_path / "v.npz", how)
    with pytest.raises(VocabularyError, match=r"v\.npz: not a readable SIFT-HE vocabulary \(.+\)$"):
        Vocabulary.load(tmp_path / "v.npz")


@pytest.mark.parametrize("how", ["empty", "truncated", "settings a list"])
def test_damaged_cached_vocabulary_is_trained_again_with_a_warning(tmp_path, how):
    files = []
    for seed in range(3):
        files.append(tmp_path / f"{seed}.png")
        Image.fromarray(_scene(seed)).save(files[-1])
    trained = SiftHESystem(256, words=16)
    trained.fit(files, cache_dir=tmp_path / "cache", progress=False)
    (cached,) = (tmp_path / "cache" / "vocabularies").iterdir()
    _damage_vocabulary(cached, how)
    again = SiftHESystem(256, words=16)
    with pytest.warns(CacheWarning, match=f"{cached.name}: not a readable SIFT-HE vocabulary .*training the vocabulary "
                                          "again"):
        seconds = again.fit(files, cache_dir=tmp_path / "cache", progress=False)
    assert "vocabulary_kmeans" in seconds and again.vocabulary.digest == trained.vocabulary.digest
    assert Vocabulary.load(cached).digest == trained.vocabulary.digest  # the damaged entry was replaced


def test_vocabulary_cache_that_cannot_be_written_is_a_warning(tmp_path):
    """As the descriptor cache: a vocabulary trained but not cached (a read-only cache, a file in the folder's place)
    is used, with a CacheWarning, not an error after the whole SIFT and k-means run."""
    files = []
    for seed in range(3):
        files.append(tmp_path / f"{seed}.png")
        Image.fromarray(_scene(seed)).save(files[-1])
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "vocabularies").write_text("a file where the folder goes")
    system = SiftHESystem(256, words=16)
    with pytest.warns(CacheWarning, match=r"vocabularies/\w+\.npz: cannot write the vocabulary cache \(.+\); not "
                                          "cached") as caught:
        seconds = system.fit(files, cache_dir=tmp_path / "cache", progress=False)
    assert len(caught) == 1 and "vocabulary_kmeans" in seconds and system.vocabulary is not None
    assert (tmp_path / "cache" / "vocabularies").read_text() == "a file where the folder goes"


def test_synthetic_image_retrieves_itself_first():
    scenes = [_scene(seed) for seed in range(6)]
    raw = [sift(s) for s in scenes]
    assert all(50 < len(r) <= 3000 for r in raw) and raw[0].dtype == np.uint8
    index = SiftHE(Vocabulary.train(raw, words=64), size=256)
    for s in scenes:
        index.add(index.describe(s))
    for i, s in enumerate(scenes):
        assert np.argmax(index.search(index.describe(s))) == i
        # A bounding-box query (the central 60 %) finds its photo too.
        assert np.argmax(index.search(index.describe(s, box=(50, 50, 206, 206)))) == i


def test_ukbench_end_to_end(ukbench_dir: Path):
    """The UKBench score (same-object photos among the top 4, the query included) of 56 real photos."""
    files = sorted(ukbench_dir.glob("*.jpg"))
    system = SiftHESystem(320, words=1000)
    seconds = system.fit(files, progress=False)
    assert set(seconds) == {"vocabulary_sift", "vocabulary_kmeans"}
    database = system.describe(files, progress=False)  # from the SIFT kept by fit
    assert database.descriptors.shape == (56, 2 * system.max_features) and not database.failures
    np.testing.assert_array_equal(database.descriptors[:3], system.describe(files[:3], progress=False).descriptors)
    ids = system.rank(database.descriptors, database.descriptors, k=4)[1]
    groups = np.array([int(f.stem[-5:]) // 4 for f in files])
    score = np.mean([(groups[row] == groups[q]).sum() for q, row in enumerate(ids)])
    # Chance is about 1.2 (the query itself plus 3 * 3/55); measured 3.82 with these settings.
    assert score >= 3.0
