"""Exact search against a brute-force numpy ranking, and the on-disk index format (flat and IVF-PQ)."""
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from advquery.retrieval import ANN_FILE, DESCRIPTORS, IMAGES, IVFPQ, MANIFEST, ImageIndex, IndexFileError, Manifest, rank


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k", [None, 7, 1000])
def test_rank_matches_brute_force(k):
    rng = np.random.default_rng(0)
    db, queries = _unit_rows(rng, 300, 24), _unit_rows(rng, 6, 24)
    scores, ids = rank(db, queries, k)
    n_out = 300 if k is None else min(k, 300)
    assert scores.shape == ids.shape == (6, n_out)
    sims = queries.astype(np.float64) @ db.T.astype(np.float64)
    for q in range(6):
        order = np.argsort(-sims[q], kind="stable")[:n_out]
        np.testing.assert_allclose(scores[q], sims[q, order], atol=1e-5)
        np.testing.assert_allclose(sims[q, ids[q]], scores[q], atol=1e-5)  # ids carry their scores
        # Where the reference has no near-tie around a position, the id there is the same.
        s = sims[q, np.argsort(-sims[q], kind="stable")]
        gaps = s[:-1] - s[1:]
        clear = ((np.r_[np.inf, gaps] > 1e-5) & (np.r_[gaps, np.inf] > 1e-5))[:n_out]
        assert clear.sum() > 0.9 * n_out
        np.testing.assert_array_equal(ids[q][clear], order[clear])


def test_rank_is_best_first_with_a_planted_match():
    rng = np.random.default_rng(1)
    db = _unit_rows(rng, 50, 16)
    scores, ids = rank(db, db[[17, 3]], k=5)
    assert list(ids[:, 0]) == [17, 3]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)


# ------------------------------------------------------------------------------------- ImageIndex


@pytest.fixture
def index() -> ImageIndex:
    rng = np.random.default_rng(2)
    desc = _unit_rows(rng, 5, 8)
    paths = [Path(f"/photos/holiday {i}.jpg") for i in range(5)]
    return ImageIndex(desc, paths, Manifest(model="efficientnet-lite0-gem", size=512, scales=(1.0, 0.5), dim=8, count=5))


def test_index_save_load_round_trip(index, tmp_path):
    target = tmp_path / "idx"
    index.save(target)
    assert sorted(p.name for p in target.iterdir()) == sorted([DESCRIPTORS, IMAGES, MANIFEST])  # no temp files left
    loaded = ImageIndex.load(target)
    np.testing.assert_array_equal(loaded.descriptors, index.descriptors)
    assert loaded.descriptors.dtype == np.float32
    assert loaded.paths == index.paths
    assert loaded.manifest == index.manifest and loaded.manifest.scales == (1.0, 0.5)
    hits = loaded.search(index.descriptors[[2]], k=2)[0]
    assert hits[0][0] == index.paths[2] and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 2 and hits[1][1] <= hits[0][1]


def test_load_without_manifest(tmp_path):
    with pytest.raises(IndexFileError, match="not an advquery index"):
        ImageIndex.load(tmp_path)


def test_load_truncated_descriptors(index, tmp_path):
    index.save(tmp_path)
    data = (tmp_path / DESCRIPTORS).read_bytes()
    (tmp_path / DESCRIPTORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match=f"{tmp_path}: damaged index"):
        ImageIndex.load(tmp_path)


def test_load_count_mismatch(index, tmp_path):
    index.save(tmp_path)
    meta = json.loads((tmp_path / MANIFEST).read_text())
    meta["count"] = 6
    (tmp_path / MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match=r"damaged index: the manifest says 6 x 8"):
        ImageIndex.load(tmp_path)


def test_load_missing_paths_file(index, tmp_path):
    index.save(tmp_path)
    (tmp_path / IMAGES).unlink()
    with pytest.raises(IndexFileError, match="damaged index"):
        ImageIndex.load(tmp_path)


def test_load_manifest_missing_field(index, tmp_path):
    index.save(tmp_path)
    meta = json.loads((tmp_path / MANIFEST).read_text())
    del meta["size"]
    (tmp_path / MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match="damaged index"):
        ImageIndex.load(tmp_path)


def test_manifest_compatibility(index):
    m = index.manifest
    assert m.compatible_with("efficientnet-lite0-gem", 512, [1.0, 0.5]) is None
    for what, args in (("model", ("other-model", 512, (1.0, 0.5))), ("size", (m.model, 1024, (1.0, 0.5))),
                       ("scales", (m.model, 512, (1.0,)))):
        reason = m.compatible_with(*args)
        assert reason is not None and what in reason
        assert repr(getattr(m, what)) in reason  # says what the index has ...
        assert repr(args[("model", "size", "scales").index(what)]) in reason  # ... and what the query has
    assert replace(m, size=1024).compatible_with(m.model, 1024, m.scales) is None


def _edit_manifest(directory: Path, **changes) -> None:
    meta = json.loads((directory / MANIFEST).read_text())
    (directory / MANIFEST).write_text(json.dumps({**meta, **changes}))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / DESCRIPTORS).write_bytes(b""), f"{DESCRIPTORS} cannot be read"),
    (lambda d: _edit_manifest(d, size="big"), "manifest.json: 'size' must be a positive integer, found 'big'"),
    (lambda d: _edit_manifest(d, scales="1"), "'scales' must be a list of positive numbers"),
    (lambda d: _edit_manifest(d, count=-1), "'count' must be a positive integer"),
    (lambda d: (d / MANIFEST).write_text("[1, 2]"), "manifest.json: expected a JSON object, found list"),
    (lambda d: (d / MANIFEST).write_text("{"), "manifest.json: Expecting property name"),
    # Values that load but do not belong together: caught by the digest the index was saved with.
    (lambda d: _edit_manifest(d, model="efficientnet-lite1-gem"), "do not match the digest"),
    (lambda d: (d / IMAGES).write_text((d / IMAGES).read_text().replace("holiday 1", "holiday 9")), "do not match"),
    (lambda d: np.save(d / DESCRIPTORS, np.load(d / DESCRIPTORS)[::-1]), "do not match the digest"),
    (lambda d: _edit_manifest(d, digest=None), "has no digest"),
    (lambda d: (d / IMAGES).write_text("not json\n" * 5), f"{IMAGES} cannot be read"),
])
def test_damaged_index_is_refused_with_what_is_wrong(index, tmp_path, damage, message):
    index.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(IndexFileError) as info:
        ImageIndex.load(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: damaged index: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_index_with_nan_descriptors_is_refused(index, tmp_path):
    rows = index.descriptors.copy()
    rows[2, 3] = np.nan
    ImageIndex(rows, index.paths, index.manifest).save(tmp_path)  # as a model gone wrong would write it
    with pytest.raises(IndexFileError, match=f"damaged index: {DESCRIPTORS}: descriptors hold NaN or infinity"):
        ImageIndex.load(tmp_path)


def test_any_file_name_round_trips(index, tmp_path):
    """Newlines, line and paragraph separators, backslashes, quotes and undecodable bytes in file names."""
    names = ["new\nline.jpg", "line\u2028separator.jpg", "para\u2029graph\r.jpg", 'quote" back\\slash.jpg',
             os.fsdecode(b"bytes\xff\xfe.jpg")]
    paths = [Path("/photos") / n for n in names]
    ImageIndex(index.descriptors, paths, index.manifest).save(tmp_path)
    assert ImageIndex.load(tmp_path).paths == paths


# ------------------------------------------------------------------------------- IVF-PQ index files


@pytest.fixture(scope="module")
def ivfpq_index() -> ImageIndex:
    """An IVF-PQ index of 300 seeded rows (the fewest its product quantizer trains on)."""
    desc = _unit_rows(np.random.default_rng(3), 300, 16)
    ivf = IVFPQ(16, 300, nlist=4)
    manifest = Manifest(model="efficientnet-lite0-gem", size=512, scales=(1.0,), dim=16, count=300,
                        index=ivf.settings())
    return ImageIndex(desc, [Path(f"/photos/{i}.jpg") for i in range(300)], manifest, ivf.build(desc))


def test_flat_index_files_are_as_before_ivfpq(index, tmp_path):
    index.save(tmp_path)
    meta = json.loads((tmp_path / MANIFEST).read_text())
    assert set(meta) == {"model", "size", "scales", "dim", "count", "version", "features", "settings", "digest"}
    assert json.loads(json.dumps(index.manifest.to_json())) == {k: v for k, v in meta.items() if k != "digest"}
    with pytest.raises(ValueError, match="apply to an IVF-PQ index; this one is flat"):
        index.search(index.descriptors[:1], k=2, nprobe=2)


def test_an_index_replaced_by_another_type_leaves_no_stray_file(index, ivfpq_index, tmp_path):
    ivfpq_index.save(tmp_path)
    assert (tmp_path / ANN_FILE).is_file() and ImageIndex.load(tmp_path).ann is not None
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([DESCRIPTORS, IMAGES, MANIFEST])
    assert ImageIndex.load(tmp_path).ann is None


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / ANN_FILE).unlink(), f"{ANN_FILE} cannot be read (No such file or directory)"),
    (lambda d: (d / ANN_FILE).write_bytes((d / ANN_FILE).read_bytes()[:1000]),
     f"{IMAGES}, {DESCRIPTORS} and {ANN_FILE} do not match the digest"),
    (lambda d: (d / ANN_FILE).write_bytes(b""), f"and {ANN_FILE} do not match the digest"),
    (lambda d: _edit_manifest(d, index={**json.loads((d / MANIFEST).read_text())["index"], "nlist": 8}),
     "do not match the digest"),
    (lambda d: _edit_manifest(d, index={"type": "hnsw"}), "manifest.json: unknown index type 'hnsw'"),
    (lambda d: _edit_manifest(d, index="ivfpq"), "'index' must be an object, found 'ivfpq'"),
])
def test_damaged_ivfpq_index_is_refused_with_what_is_wrong(ivfpq_index, tmp_path, damage, message):
    ivfpq_index.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(IndexFileError) as info:
        ImageIndex.load(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: damaged index: ") and message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_a_failed_ivfpq_save_leaves_the_index_it_replaces(index, ivfpq_index, tmp_path, monkeypatch):
    index.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)  # fails after the IVF-PQ file was written beside its target
    with pytest.raises(OSError, match="No space left"):
        ivfpq_index.save(tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no IVF-PQ file, no temporary
    assert ImageIndex.load(tmp_path).ann is None
