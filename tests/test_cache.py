"""The evaluation's descriptor cache: a damaged entry is described again with a warning, never used."""
import shutil

import numpy as np
import pytest

from advquery.evaluation.datasets import load_dataset
from advquery.cache import CacheWarning
from advquery.evaluation.runner import database_cache_path, evaluate
from advquery.models import load_model
from advquery.systems import NeuralSystem

SIZE = 64


@pytest.fixture(scope="module")
def setup(ukbench_dir, tmp_path_factory):
    """Two UKBench objects of four photos each as a one-folder-per-group dataset, and a clean evaluation."""
    root = tmp_path_factory.mktemp("groups") / "objects"
    for i in range(8):
        (root / f"g{i // 4}").mkdir(parents=True, exist_ok=True)
        shutil.copy(ukbench_dir / f"ukbench{i:05d}.jpg", root / f"g{i // 4}" / f"{i}.jpg")
    system = NeuralSystem(load_model("efficientnet-lite0-gem", device="cpu"), SIZE)
    dataset = load_dataset(str(root))
    cache = tmp_path_factory.mktemp("cache")
    clean = evaluate(dataset, system, cache_dir=cache, progress=False)
    path = database_cache_path(dataset, system, cache)
    return {"dataset": dataset, "system": system, "cache": cache, "path": path, "rows": np.load(path),
            "map": clean.results["medium"].map}


DAMAGES = {
    "fewer columns": (lambda rows, p: np.save(p, rows[:, :100]), "rows of 100 float32, the system describes 1280"),
    "fewer rows": (lambda rows, p: np.save(p, rows[:-1]), "7 rows for 8 images"),
    "truncated": (lambda rows, p: p.write_bytes(p.read_bytes()[:300]), "unreadable"),
    "empty": (lambda rows, p: p.write_bytes(b""), "unreadable: No data left in file"),
    "NaN": (lambda rows, p: np.save(p, np.where(np.arange(rows.size).reshape(rows.shape) == 5, np.nan, rows)),
            "descriptors hold NaN or infinity"),
    "float64": (lambda rows, p: np.save(p, rows.astype(np.float64)), "rows of 1280 float64"),
    "other rows": (lambda rows, p: np.save(p, rows[::-1].copy()), "its first row is not the description of"),
    "one-dimensional": (lambda rows, p: np.save(p, rows.ravel()), "expected a 2-D array"),
    "pickled object": (lambda rows, p: np.save(p, np.array([{"x": 1}], dtype=object), allow_pickle=True), "unreadable"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_cache_entry_is_described_again_with_one_warning(setup, damage):
    write, reason = DAMAGES[damage]
    path = setup["path"]
    write(setup["rows"], path)
    with pytest.warns(CacheWarning) as caught:
        report = evaluate(setup["dataset"], setup["system"], cache_dir=setup["cache"], progress=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{path}: damaged descriptor cache (") and reason in message, message
    assert report.results["medium"].map == pytest.approx(setup["map"])  # not the damaged rows' mAP
    assert "database" in report.seconds  # described again ...
    np.testing.assert_allclose(np.load(path), setup["rows"], atol=1e-6)  # ... and cached again, whole
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


def test_sound_cache_entry_is_used_without_a_word(setup, recwarn):
    np.save(setup["path"], setup["rows"])
    report = evaluate(setup["dataset"], setup["system"], cache_dir=setup["cache"], progress=False)
    assert "database" not in report.seconds and not [w for w in recwarn if issubclass(w.category, CacheWarning)]
    assert report.results["medium"].map == pytest.approx(setup["map"])


def test_cache_that_cannot_be_written_is_one_warning(setup, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "descriptors").write_text("a file where the folder goes")
    with pytest.warns(CacheWarning) as caught:
        report = evaluate(setup["dataset"], setup["system"], cache_dir=cache, progress=False)
    assert len(caught) == 1
    assert str(caught[0].message).startswith(f"{cache / 'descriptors'}/") and \
        "cannot write the descriptor cache (" in str(caught[0].message), str(caught[0].message)
    assert str(caught[0].message).endswith("; not cached")
    assert report.results["medium"].map == pytest.approx(setup["map"])
