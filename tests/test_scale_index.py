"""Indexes that scale: IVF-PQ search against exact search on seeded data, shards merged into one index,
``index build --index-type ivfpq`` and ``search --nprobe/--rerank`` on real photos, and ``eval --distractors``."""
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from advquery.evaluation.datasets import DatasetError, load_dataset, load_distractors
from advquery.evaluation.runner import EvaluationError, evaluate
from advquery.models import load_model
from advquery.retrieval import (ANN_FILE, IVFPQ, ImageIndex, Manifest, fill_shard, merge_shards, rank,
                                search_ivfpq)
from advquery.systems import NeuralSystem
from helpers import run_cli

N, D, K = 3000, 64, 10


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def seeded():
    """Rows around 100 centres (as descriptors of photos of a few places are), 40 queries of the same kind,
    the IVF-PQ index of the rows with its default settings, and the exact top 100 of every query."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(100, D))
    db = _unit(centres[rng.integers(0, 100, N)] + 0.6 * rng.normal(size=(N, D)))
    queries = _unit(centres[rng.integers(0, 100, 40)] + 0.6 * rng.normal(size=(40, D)))
    ivf = IVFPQ(D, N)
    trained = ivf.train(db)
    return {"db": db, "queries": queries, "ivf": ivf, "trained": trained, "ann": fill_shard(trained, db),
            "exact": rank(db, queries, 100)[1]}


def _recall(ids: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, exact)]))


def test_default_settings_follow_the_collection():
    ivf = IVFPQ(1280, 1_000_000)
    assert (ivf.nlist, ivf.pq, ivf.train_size) == (4000, 80, 256_000)  # 4 sqrt(n); a byte per 16 dimensions
    small = IVFPQ(1280, 300)
    assert small.nlist == 300 // 39 and small.train_size == 300  # at most n / 39 lists; all rows when few
    assert IVFPQ(1408, 10_000).pq == 88 and IVFPQ(100, 10_000).pq == 5  # divisors of the dimension
    assert small.settings() == {"type": "ivfpq", "file": ANN_FILE, "metric": "inner product", "nlist": 7, "pq": 80,
                                "bits": 8, "train_size": 300, "seed": 0}


@pytest.mark.parametrize("kwargs, message", [
    ({"dim": 64, "count": 255}, "IVF-PQ needs at least 256 images to train its product quantizer"),
    ({"dim": 64, "count": 1000, "nlist": 26}, "nlist 26 needs at least 1014 images to train its centroids"),
    ({"dim": 64, "count": 1000, "pq": 7}, "pq 7 does not divide the descriptor dimension 64 (divisors: 1, 2, 4, 8,"),
    ({"dim": 64, "count": 1000, "nlist": 0}, "nlist must be an integer >= 1, got 0"),
])
def test_impossible_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError) as info:
        IVFPQ(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_ivfpq_finds_what_exact_search_finds(seeded):
    db, queries, ann, exact = seeded["db"], seeded["queries"], seeded["ann"], seeded["exact"]
    nlist = seeded["ivf"].nlist
    estimated = {p: search_ivfpq(ann, db, queries, 100, p, rerank=0)[1] for p in (1, 4, nlist)}
    reranked = search_ivfpq(ann, db, queries, K, 16, rerank=100)
    assert _recall(reranked[1], exact, K) >= 0.95  # re-ranking a shortlist of 100 exactly
    assert 0.3 <= _recall(estimated[nlist], exact, K) < _recall(reranked[1], exact, K)  # 4 bytes per row alone
    recalls = [_recall(estimated[p], exact, 100) for p in (1, 4, nlist)]
    assert recalls == sorted(recalls) and recalls[0] < recalls[-1]  # probing more lists finds more
    np.testing.assert_allclose(reranked[0], np.einsum("qkd,qd->qk", db[reranked[1]], queries), atol=1e-5)
    # Every list probed and every row re-ranked: the exact ranking.
    scores, ids = search_ivfpq(ann, db, queries, K, nlist, rerank=N)
    np.testing.assert_array_equal(ids, exact[:, :K])
    with pytest.raises(ValueError, match=f"nprobe must be in 1..{nlist}"):
        search_ivfpq(ann, db, queries, K, nlist + 1)


def test_merged_shards_equal_a_single_process_index(seeded):
    db, trained = seeded["db"], seeded["trained"]
    shards = [fill_shard(trained, part) for part in np.array_split(db, [700, 2100])]
    merged = merge_shards(shards)
    assert merged.ntotal == N
    np.testing.assert_array_equal(faiss.serialize_index(merged), faiss.serialize_index(seeded["ann"]))
    single = search_ivfpq(seeded["ann"], db, seeded["queries"], K, 4, rerank=0)
    np.testing.assert_array_equal(search_ivfpq(merged, db, seeded["queries"], K, 4, rerank=0)[1], single[1])


def test_shards_of_another_training_are_refused(seeded):
    db = seeded["db"]
    other = IVFPQ(D, N, seed=1).train(db[::-1].copy())
    with pytest.raises(ValueError, match="shard 1: trained separately"):
        merge_shards([fill_shard(seeded["trained"], db[:100]), fill_shard(other, db[100:])])
    with pytest.raises(ValueError, match="the trained index must be empty"):
        fill_shard(seeded["ann"], db)


def test_ivfpq_index_round_trips_and_searches(seeded, tmp_path):
    db, ivf = seeded["db"], seeded["ivf"]
    paths = [Path(f"/photos/{i}.jpg") for i in range(N)]
    manifest = Manifest(model="m", size=64, scales=(1.0,), dim=D, count=N, index=ivf.settings())
    ImageIndex(db, paths, manifest, seeded["ann"]).save(tmp_path)
    loaded = ImageIndex.load(tmp_path)
    assert loaded.manifest == manifest and loaded.manifest.index["nlist"] == ivf.nlist
    np.testing.assert_array_equal(faiss.serialize_index(loaded.ann), faiss.serialize_index(seeded["ann"]))
    hits = loaded.search(db[[5, 9]], k=3)
    assert [h[0] for h in hits] == [(paths[5], pytest.approx(1.0, abs=1e-5)), (paths[9], pytest.approx(1.0, abs=1e-5))]
    estimate = loaded.search(db[[5]], k=1, nprobe=ivf.nlist, rerank=0)[0][0][1]
    assert estimate != pytest.approx(1.0, abs=1e-4)  # the product quantizer's estimate, not the exact score
    with pytest.raises(ValueError, match="needs both its faiss index and its manifest entry"):
        ImageIndex(db, paths, Manifest(model="m", size=64, scales=(1.0,), dim=D, count=N), seeded["ann"])


# ----------------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def photo_index(data_root, tmp_path_factory):
    """``index build --index-type ivfpq`` of 300 real Oxford photos (the fewest a product quantizer trains
    on) at the smallest working size."""
    photos = sorted((data_root / "roxford5k-mini" / "jpg").glob("*.jpg"))[:300]
    out = tmp_path_factory.mktemp("ivfpq") / "idx"
    code, _, stderr = run_cli(["index", "build", *map(str, photos), "-o", str(out), "--size", "32",
                               "--index-type", "ivfpq", "--nlist", "4"])
    assert code == 0, stderr
    return {"photos": photos, "index": out, "stderr": stderr}


def test_index_build_ivfpq_records_its_settings(photo_index):
    index = ImageIndex.load(photo_index["index"])
    assert index.manifest.index == IVFPQ(1280, 300, nlist=4).settings()
    assert sorted(p.name for p in photo_index["index"].iterdir()) == sorted(
        [ANN_FILE, "descriptors.npy", "images.jsonl", "manifest.json"])
    assert "IVF-PQ: 4 lists, 80 bytes per image, trained on 300" in photo_index["stderr"]


def test_search_ivfpq_finds_the_query_first(photo_index):
    query = photo_index["photos"][17]
    code, out, err = run_cli(["search", str(query), "--index", str(photo_index["index"]), "-k", "3", "--json"])
    assert code == 0, err
    results = json.loads(out)["results"]
    assert results[0]["path"] == str(query.resolve()) and results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    code, out, _ = run_cli(["search", str(query), "--index", str(photo_index["index"]), "-k", "3", "--json",
                            "--nprobe", "4", "--rerank", "0"])
    estimated = json.loads(out)["results"]
    assert code == 0 and estimated[0]["score"] != pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def flat_index(ukbench_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("flat") / "idx"
    code, _, stderr = run_cli(["index", "build", *(str(ukbench_dir / f"ukbench0000{i}.jpg") for i in range(3)),
                               "-o", str(out), "--size", "32"])
    assert code == 0, stderr
    return out


@pytest.mark.parametrize("case", ["too few", "pq", "nlist flat", "cedd", "nlist 0", "nprobe flat", "nprobe lists"])
def test_impossible_index_options_get_one_line(case, photo_index, flat_index, ukbench_dir, tmp_path):
    photo, out = str(ukbench_dir / "ukbench00000.jpg"), str(tmp_path / "new")
    many = [str(p) for p in photo_index["photos"]]
    argv, reason = {
        "too few": (["index", "build", photo, "-o", out, "--index-type", "ivfpq"],
                    "--index-type ivfpq: IVF-PQ needs at least 256 images"),
        "pq": (["index", "build", *many, "-o", out, "--size", "32", "--index-type", "ivfpq", "--pq", "7"],
               "--index-type ivfpq: pq 7 does not divide the descriptor dimension 1280"),
        "nlist flat": (["index", "build", photo, "-o", out, "--nlist", "8"], "--nlist and --pq apply to --index-type ivfpq"),
        "cedd": (["index", "build", photo, "-o", out, "--index-type", "ivfpq", "--features", "cedd"],
                 "--index-type ivfpq applies to --features neural only"),
        "nlist 0": (["index", "build", photo, "-o", out, "--index-type", "ivfpq", "--nlist", "0"],
                    "--nlist: expected an integer in 1..2147483647, got '0'"),
        "nprobe flat": (["search", photo, "--index", str(flat_index), "--nprobe", "2"],
                        f"--nprobe and --rerank apply to an IVF-PQ index; {flat_index} is flat"),
        "nprobe lists": (["search", photo, "--index", str(photo_index["index"]), "--nprobe", "5"],
                         f"--nprobe 5: {photo_index['index']} has 4 inverted lists"),
    }[case]
    code, stdout, stderr = run_cli(argv)
    assert code == 2 and stdout == "" and stderr.count("\n") == 1 and reason in stderr, stderr
    assert not Path(out).exists()  # refused before anything was written


# ----------------------------------------------------------------------------------------- distractors


@pytest.fixture(scope="module")
def with_distractors(data_root, tmp_path_factory):
    """ukbench-mini evaluated plain and with 20 Oxford photos (listed relative to the data root) added."""
    work = tmp_path_factory.mktemp("distractors")
    listing = work / "distractors.txt"
    names = sorted((data_root / "roxford5k-mini" / "jpg").glob("*.jpg"))[:20]
    listing.write_text("".join(f"roxford5k-mini/jpg/{p.name}\n" for p in names) + "\n")
    dataset = load_dataset("ukbench-mini", data_root)
    system = NeuralSystem(load_model("efficientnet-lite0-gem", device="cpu"), 64)
    plain = evaluate(dataset, system, cache_dir=work / "cache", progress=False)
    distractors = load_distractors(listing, data_root)
    added = evaluate(dataset, system, cache_dir=work / "cache", progress=False, distractors=distractors)
    again = evaluate(dataset, system, cache_dir=work / "cache", progress=False, distractors=distractors)
    return {"plain": plain, "added": added, "again": again, "listing": listing, "names": names, "work": work,
            "dataset": dataset, "system": system}


def test_distractors_grow_the_database_and_cost_map(with_distractors, data_root):
    plain, added = with_distractors["plain"], with_distractors["added"]
    n_db = len(with_distractors["dataset"].images)
    assert plain.ranks.shape[0] == n_db and added.ranks.shape[0] == n_db + 20 and added.distractors == 20
    assert added.results["medium"].map <= plain.results["medium"].map
    assert added.random["medium"] < plain.random["medium"]  # a random ranking suffers from the larger database
    assert set(added.ranks[:, 0]) == set(range(n_db + 20))  # every distractor is ranked
    assert "distractors" in added.seconds and added.summary()["distractors"] == 20
    assert load_distractors(with_distractors["listing"], data_root) == [p for p in with_distractors["names"]]


def test_distractor_descriptors_are_cached_like_the_database(with_distractors):
    again = with_distractors["again"]
    assert "distractors" not in again.seconds and "database" not in again.seconds  # both from the cache
    np.testing.assert_array_equal(again.ranks, with_distractors["added"].ranks)
    assert len(list((with_distractors["work"] / "cache" / "descriptors").glob("*.npy"))) == 2  # database, distractors


def test_a_database_image_is_not_a_distractor(with_distractors):
    dataset = with_distractors["dataset"]
    with pytest.raises(EvaluationError, match="1 distractor\\(s\\) are images of ukbench-mini's database"):
        evaluate(dataset, with_distractors["system"], cache_dir=False, progress=False,
                 distractors=[dataset.images[3]])


def test_eval_distractors_on_the_command_line(with_distractors, data_root):
    code, out, err = run_cli(["eval", "--dataset", "ukbench-mini", "--data-root", str(data_root), "--size", "64",
                              "--cache", str(with_distractors["work"] / "cache"),
                              "--distractors", str(with_distractors["listing"])])
    assert code == 0, err
    assert "20 distractors added" in out
    assert f"{100 * with_distractors['added'].results['medium'].map:6.2f}" in out


@pytest.mark.parametrize("case", ["missing", "unreadable", "empty", "absent list"])
def test_bad_distractors_get_one_line_naming_the_file(case, data_root, tmp_path):
    listing = tmp_path / "list.txt"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a JPEG")
    lines, reason, named = {
        "missing": ("roxford5k-mini/jpg/no_such_photo.jpg\n", "1 of the 1 listed distractors are missing", listing),
        "unreadable": (f"{broken}\n", "1 image(s) could not be read", broken),
        "empty": ("\n\n", "the distractor list holds no image path", listing),
        "absent list": (None, "cannot read the distractor list (No such file or directory)", listing),
    }[case]
    if lines is not None:
        listing.write_text(lines)
    code, stdout, stderr = run_cli(["eval", "--dataset", "ukbench-mini", "--data-root", str(data_root), "--size", "32",
                                    "--no-cache", "--distractors", str(listing)])
    assert code == 2 and stderr.count("\n") == 1 and reason in stderr and str(named) in stderr, stderr
    assert "Traceback" not in stderr


def test_relative_distractors_need_a_data_root(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("jpg/a.jpg\n")
    with pytest.raises(DatasetError, match="1 distractor paths are relative"):
        load_distractors(listing)
