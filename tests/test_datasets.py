"""Dataset loaders on the real shared data, on small symlinked subsets and on synthetic folders."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advquery.evaluation.datasets import (DATASET_NAMES, DatasetError, RetrievalDataset, load_dataset,
                                          load_gnd_file)
from advquery.evaluation.metrics import compute_map


def perfect_ranks(ds: RetrievalDataset, protocol: str) -> tuple[np.ndarray, list[dict]]:
    """Ranks with every query's positives first, then its junk, then the rest."""
    gnd = ds.ground_truth(protocol)
    columns = []
    for g in gnd:
        first = list(dict.fromkeys(g["ok"] + g["junk"]))
        columns.append(first + sorted(set(range(len(ds.images))) - set(first)))
    return np.array(columns).T, gnd


# --- real data ----------------------------------------------------------------------------------

def test_roxford5k_mini(data_root):
    ds = load_dataset("roxford5k-mini", data_root)
    assert (len(ds.images), len(ds.queries)) == (996, 58)
    assert ds.protocols == ("easy", "medium", "hard")
    assert sum(bool(g["ok"]) for g in ds.ground_truth("medium")) == 47
    assert ds.query_names()[0] == "all_souls_000013"
    assert ds.query_boxes[0] == (136.5, 34.1, 648.5, 955.7)
    assert all(len(b) == 4 for b in ds.query_boxes)
    assert not set(ds.queries) & set(ds.images)
    assert all(p.is_file() for p in ds.images + ds.queries)
    assert ds.notes == ()


def test_roxford5k_mini_ext(data_root):
    ds = load_dataset("roxford5k-mini-ext", data_root)
    assert (len(ds.images), len(ds.queries)) == (996, 156)
    assert ds.query_boxes == [None] * 156
    for i, q in enumerate(ds.queries):
        assert ds.gnd[i]["junk"].count(ds.images.index(q)) == 1  # never its own match
    # The json lists some images as positive and as junk of the same query; the loader keeps
    # them as positives so that a perfect ranking scores exactly 1 (not up to 7.9 per query).
    assert "positive and as junk" in ds.notes[0]
    for protocol in ds.protocols:
        ranks, gnd = perfect_ranks(ds, protocol)
        assert all(not set(g["ok"]) & set(g["junk"]) for g in gnd)
        assert compute_map(ranks, gnd).map == pytest.approx(1.0)


def test_ukbench_mini(data_root):
    ds = load_dataset("ukbench-mini", data_root)
    assert len(ds.queries) == len(ds.images) == 56 and ds.queries == ds.images
    for i, g in enumerate(ds.gnd):
        assert len(g["easy"]) == 3 and g["hard"] == [] and g["junk"] == [i]
        assert {int(ds.images[j].stem[-5:]) // 4 for j in g["easy"] + [i]} == {i // 4}
    assert ds.protocols == ("medium",)
    ranks, gnd = perfect_ranks(ds, "medium")
    assert compute_map(ranks, gnd).map == pytest.approx(1.0)


def test_gnd_json_and_pickle_agree(data_root):
    folder = data_root / "roxford5k-mini"
    from_pkl = load_gnd_file(folder / "gnd_roxford5k-mini.pkl")
    assert from_pkl == load_gnd_file(folder / "gnd_roxford5k-mini.json")
    assert from_pkl["gnd"][0]["bbx"] == (136.5, 34.1, 648.5, 955.7)


def test_full_revisited_falls_back_to_revisitop_gnd(data_root, tmp_path):
    raw = load_gnd_file(data_root / "revisitop-gnd" / "gnd_roxford5k.pkl")
    jpg = tmp_path / "roxford5k" / "jpg"
    jpg.mkdir(parents=True)
    for name in raw["imlist"] + raw["qimlist"]:
        (jpg / f"{name}.jpg").touch()
    (tmp_path / "revisitop-gnd").symlink_to(data_root / "revisitop-gnd")
    ds = load_dataset("roxford5k", tmp_path)
    assert (len(ds.images), len(ds.queries)) == (4993, 70)
    assert ds.root == tmp_path / "roxford5k"
    (jpg / f"{raw['imlist'][0]}.jpg").unlink()
    with pytest.raises(DatasetError, match="1 database images .* missing"):
        load_dataset("roxford5k", tmp_path)


def test_oxford5k_classic_on_a_subset(data_root, tmp_path):
    jpg = tmp_path / "oxford5k" / "jpg"
    jpg.mkdir(parents=True)
    names = ["all_souls_000013", "all_souls_000017", "all_souls_000026", "all_souls_000103", "ashmolean_000058"]
    for name in names:
        (jpg / f"{name}.jpg").symlink_to(data_root / "roxford5k-mini" / "jpg" / f"{name}.jpg")
    (tmp_path / "oxford5k-classic-gt").symlink_to(data_root / "oxford5k-classic-gt")
    ds = load_dataset("oxford5k", tmp_path)
    assert [p.stem for p in ds.images] == names
    # Queries present: all_souls_1, all_souls_2 and ashmolean_1.
    assert ds.query_names() == ["all_souls_000013", "all_souls_000026", "ashmolean_000058"]
    assert ds.protocols == ("classic",)
    assert ds.query_boxes[0] == (136.5, 34.1, 648.5, 955.7)
    # all_souls_1: good lists 000026 then the query itself, ok 000103, junk 000017; absent names dropped.
    assert ds.gnd[0] == {"good": [2, 0], "ok": [3], "junk": [1]}
    assert ds.ground_truth("classic")[0] == {"ok": [2, 0, 3], "junk": [1]}
    assert ds.notes[0].startswith("dropped 52 of 55 queries")


# --- restricted unpickler -----------------------------------------------------------------------

class _Malicious:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_globals(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [_Malicious(marker)]}))
    with pytest.raises(DatasetError, match=f"{path}: refused or damaged pickle \\(refusing to load global"):
        load_gnd_file(path)
    assert not marker.exists()


def test_gnd_file_checks_layout_and_indices(tmp_path):
    path = tmp_path / "gnd_bad.pkl"
    path.write_bytes(pickle.dumps({"imlist": ["a"], "gnd": []}))
    with pytest.raises(DatasetError, match=r"missing \['qimlist'\]"):
        load_gnd_file(path)
    path.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [3], "hard": [], "junk": []}]}))
    with pytest.raises(DatasetError, match=r"images \[3\] outside imlist"):
        load_gnd_file(path)


GOOD_GND = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [{"easy": [0], "hard": [1], "junk": [], "bbx": [1, 2, 3, 4]}]}


def _pickled(value) -> bytes:
    return pickle.dumps(value, protocol=2)


@pytest.mark.parametrize("name, content, message", [
    ("gnd.pkl", _pickled({"imlist": [], "qimlist": [], "gnd": [_Malicious(Path("/nonexistent/x"))]}),
     "refused or damaged pickle (refusing to load global posix.system"),
    ("gnd.pkl", _pickled(GOOD_GND)[:30], "damaged pickle (pickle data was truncated)"),
    ("gnd.pkl", b"", "damaged pickle (EOFError: Ran out of input)"),
    ("gnd.pkl", b"not a pickle at all", "refused or damaged pickle"),
    ("gnd.json", b'{"imlist": [', "not valid JSON (Expecting value"),
    ("gnd.json", b"\xff\xfe\x00", "not valid JSON"),
    ("gnd.pkl", _pickled({**GOOD_GND, "gnd": [{"easy": ["zz"]}]}),
     "query 0: 'easy' must be a list of image indices, found ['zz']"),
    ("gnd.pkl", _pickled({**GOOD_GND, "gnd": [1]}), "query 0: expected an object with index lists, found 1"),
    ("gnd.pkl", _pickled({**GOOD_GND, "gnd": {"easy": [0]}}), "'gnd' must be a list with one entry per query"),
    ("gnd.pkl", _pickled({**GOOD_GND, "imlist": "ab"}), "'imlist' must be a list of image names, found 'ab'"),
    ("gnd.pkl", _pickled({**GOOD_GND, "qimlist": ["q", "r"]}), "2 queries but 1 ground-truth entries"),
    ("gnd.pkl", _pickled({**GOOD_GND, "gnd": [{"easy": [True]}]}), "'easy' must be a list of image indices"),
    ("gnd.pkl", _pickled({**GOOD_GND, "gnd": [{"bbx": [1, 2, "x", 4]}]}), "'bbx' must be 4 numbers"),
    ("gnd.json", b'{"imlist": ["a"], "queries": [1]}', "'queries' must be a list of objects with a 'query' name, "
     "found [1]"),
])
def test_refused_ground_truth_is_one_dataset_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        load_gnd_file(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)
    assert "\n" not in str(info.value) and str(info.value).count(str(path)) == 1  # the reason, given once
    assert ("not valid JSON" in str(info.value)) == (message.startswith("not valid JSON"))


def test_good_ground_truth_still_loads(tmp_path):
    (tmp_path / "gnd.pkl").write_bytes(_pickled(GOOD_GND))
    assert load_gnd_file(tmp_path / "gnd.pkl")["gnd"] == [{"easy": [0], "hard": [1], "junk": [], "bbx": (1.0, 2.0, 3.0, 4.0)}]


@pytest.mark.parametrize("content", ["", "all_souls_000013 1 2 3", "all_souls_000013 1 2 x 4", "\udcff"])
def test_damaged_classic_query_file_is_one_dataset_error(tmp_path, content):
    (tmp_path / "oxford5k" / "jpg").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "oxford5k" / "jpg" / "all_souls_000013.jpg")
    gt = tmp_path / "oxford5k" / "gt"
    gt.mkdir()
    (gt / "all_souls_1_query.txt").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(DatasetError, match=f"{gt / 'all_souls_1_query.txt'}: "):
        load_dataset("oxford5k", tmp_path)


# --- one folder per group -----------------------------------------------------------------------

def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (value, value, value)).save(path, format="PNG")


def test_folder_per_group(tmp_path):
    root = tmp_path / "my-photos"
    for rel in ["tower/1.png", "tower/2.PNG", "tower/3.png", "bridge/a.png", "bridge/b.png", "cat/x.png"]:
        _png(root / rel, 100)
    _png(root / "loose.png", 0)
    (root / "tower" / "notes.txt").write_text("not an image")
    for ds in (load_dataset(str(root)), load_dataset("my-photos", tmp_path)):
        assert ds.name == "my-photos" and ds.root == root
        assert [p.relative_to(root).as_posix() for p in ds.images] == [
            "bridge/a.png", "bridge/b.png", "cat/x.png", "tower/1.png", "tower/2.PNG", "tower/3.png"]
        assert ds.queries == ds.images and ds.query_boxes == [None] * 6
        assert ds.gnd[0] == {"easy": [1], "hard": [], "junk": [0]}
        assert ds.gnd[2] == {"easy": [], "hard": [], "junk": [2]}
        assert ds.gnd[4] == {"easy": [3, 5], "hard": [], "junk": [4]}
        assert len(ds.notes) == 2 and "ignored 1 images" in ds.notes[0] and "1 images are alone" in ds.notes[1]
    ranks, gnd = perfect_ranks(ds, "medium")
    result = compute_map(ranks, gnd)
    assert (result.map, result.n_skipped) == (pytest.approx(1.0), 1)


# --- errors -------------------------------------------------------------------------------------

def test_missing_and_unknown_datasets(tmp_path):
    assert issubclass(DatasetError, ValueError)
    with pytest.raises(DatasetError, match=r"roxford5k-mini not found under .*: expected .*roxford5k-mini/jpg/\*\.jpg"):
        load_dataset("roxford5k-mini", tmp_path)
    with pytest.raises(DatasetError, match=r"gnd_roxford5k-mini-ext\.json"):
        load_dataset("roxford5k-mini-ext", tmp_path)
    with pytest.raises(DatasetError, match=r"ukbench-mini/jpg/ukbench00000\.jpg"):
        load_dataset("ukbench-mini", tmp_path)
    with pytest.raises(DatasetError, match=r"rparis6k not found .*revisitop-gnd/gnd_rparis6k\.pkl"):
        load_dataset("rparis6k", tmp_path)
    with pytest.raises(DatasetError, match=r"oxford5k not found .*oxford5k-classic-gt"):
        load_dataset("oxford5k", tmp_path)
    with pytest.raises(DatasetError, match="needs data_root"):
        load_dataset("ukbench-mini")
    with pytest.raises(DatasetError, match=r"unknown dataset 'holidays': expected one of " + ", ".join(DATASET_NAMES)):
        load_dataset("holidays", tmp_path)
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(str(tmp_path))


def test_ground_truth_rejects_other_protocols(data_root):
    with pytest.raises(ValueError, match=r"supports protocols \('easy', 'medium', 'hard'\), got 'classic'"):
        load_dataset("roxford5k-mini", data_root).ground_truth("classic")
    with pytest.raises(ValueError, match=r"supports protocols \('medium',\), got 'hard'"):
        load_dataset("ukbench-mini", data_root).ground_truth("hard")
