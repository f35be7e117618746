"""The tracker suite: its definitions, the poolings, the many-systems describer against the single-system path,
and the users' check (``check_protection``, ``verify --trackers``) on real photos."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import bench_module

from advquery.evaluation.metrics import average_precision
from advquery.extraction import describe
from advquery.io import read_photo, to_tensor
from advquery.models import load_model
from advquery.models.pooling import l2n, mac, rmac, rmac_regions, spoc
from advquery.trackers import (EDITS, POOLED, SUITES, SYSTEMS, VERDICTS, VERIFY_FULL, VERIFY_QUICK, Calibration,
                               SuiteDescriber, System, check_protection, edit, learn_pca_whitening, share_summary,
                               system)

LITE0 = "efficientnet-lite0-gem"


def test_suite_definitions_are_complete_and_unique():
    assert len(SYSTEMS) == 24 and len({s.name for s in SYSTEMS}) == 24
    assert len(EDITS) == 31 and len({e.spec for e in EDITS}) == 31
    assert all(e.chain is not None for e in EDITS if e.spec != "none")
    assert not any(t.system.whitened for t in VERIFY_FULL) and len(VERIFY_FULL) == 21 * 31
    assert system("lite2 rmac 1024") == System("efficientnet-lite2-gem", pooling="rmac")
    with pytest.raises(ValueError, match="unknown system 'lite9 gem 1024'"):
        system("lite9 gem 1024")
    with pytest.raises(ValueError, match="unknown edit 'jpeg:10'"):
        edit("jpeg:10")


def test_rmac_regions_of_a_square_map_are_the_classic_fourteen():
    regions = rmac_regions(10, 10, 3)
    assert len(regions) == 1 + 4 + 9
    assert regions[0] == (0, 0, 10, 10) and (4, 4, 6, 6) in regions and (5, 5, 5, 5) in regions
    assert all(t + s <= 10 and left + s <= 10 for t, left, s, _ in regions)
    wide = rmac_regions(12, 32, 3)
    assert all(t + s <= 12 and left + s <= 32 for t, left, s, _ in wide)
    assert len({left for _, left, s, _ in wide if s == 12}) > 1  # extra regions along the long side


def test_poolings_against_direct_computations():
    x = torch.rand(2, 5, 6, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mac(x), x.flatten(2).max(dim=2).values)
    torch.testing.assert_close(spoc(x), x.flatten(2).mean(dim=2))
    expected = l2n(mac(x)) + sum(l2n(mac(x[..., t:t + h, left:left + w])) for t, left, h, w in rmac_regions(6, 8))
    torch.testing.assert_close(rmac(x), expected)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_rmac_gradient_is_that_of_each_region_max(memory_format):
    """R-MAC gathers each region's maximum in one step; its gradient is that of pooling region by region (the
    random map has no ties), also on a channels-last map as the models give."""
    x = torch.rand(2, 7, 9, 13, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x.contiguous(memory_format=memory_format)
    weights = torch.randn(2, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    (rmac(a) * weights).sum().backward()
    regions = [(0, 0, 9, 13), *rmac_regions(9, 13)]
    (sum(l2n(mac(b[..., t:t + h, left:left + w])) for t, left, h, w in regions) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert torch.count_nonzero(a.grad) > 0


def test_rmac_gives_a_tied_maximum_the_same_place_in_either_memory_layout():
    """Ties are common in bfloat16 maps; the first maximum in reading order takes the gradient whatever the layout."""
    x = (torch.rand(2, 5, 9, 13, generator=torch.Generator().manual_seed(3)) * 3).round()  # few values: many ties
    grads = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        leaf = x.clone(memory_format=memory_format).requires_grad_()
        (rmac(leaf) * torch.arange(1, 6)).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)
    whole = torch.zeros_like(x).flatten(-2).scatter_(-1, x.flatten(-2).argmax(-1, keepdim=True), 1).view_as(x)
    assert bool((grads[1][whole.bool()] != 0).all())  # each channel's first maximum got its share


@pytest.fixture(scope="module")
def photos(data_root):
    jpg = data_root / "roxford5k-mini" / "jpg"
    return {name: read_photo(jpg / f"{name}.jpg").rgb for name in ("all_souls_000013", "ashmolean_000058")}


@pytest.fixture(scope="module")
def small_describer():
    systems = [System(LITE0, 128), System(LITE0, 128, "rmac"), System(LITE0, 128, "mac"),
               System(LITE0, 128, whitened=True)]
    return SuiteDescriber(systems, device="cpu")


def test_describer_equals_the_single_system_path(small_describer, photos):
    rgb = photos["all_souls_000013"]
    model = small_describer.models[LITE0]
    box = (100, 200, 600, 700)
    with torch.no_grad():
        for b in (None, box):
            ours = small_describer.describe(rgb, b, systems=small_describer.systems[:3])
            reference = describe(model, to_tensor(rgb), 128, box=b)[0].numpy()
            np.testing.assert_allclose(ours[System(LITE0, 128)], reference, atol=1e-5)
            assert abs(float(np.linalg.norm(ours[System(LITE0, 128, "rmac")])) - 1) < 1e-5
    with pytest.raises(ValueError, match="no whitening learned"):
        small_describer.describe(rgb)


def test_pca_whitening_decorrelates_what_it_was_learned_on():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    w = learn_pca_whitening(x, dim=8)
    with torch.no_grad():
        projected = torch.nn.functional.linear(torch.from_numpy(x).float() - w.m, w.P).numpy()
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(8), atol=1e-3)


def test_share_summary():
    assert share_summary([0.1, 0.2, 0.3, float("nan"), 0.9]) == {"median": 0.25, "p90": pytest.approx(0.72),
                                                                 "worst": 0.9}


def test_the_shipped_calibration_covers_every_tracker_of_both_suites():
    calibration = Calibration.load()
    assert POOLED in calibration.thresholds and calibration.source.startswith("bench/trackers.py --calibrate")
    assert (Path(__file__).parents[1] / calibration.points).is_file()  # the pairs it was fitted on, committed
    for blocked, found in calibration.thresholds.values():
        assert -1 <= blocked < found <= 1
    for t in VERIFY_QUICK:  # the quick check's systems are calibrated on their own pairs
        assert t.system.name in calibration.thresholds
    for name, (blocked, found) in calibration.thresholds.items():  # each threshold lies within its own interval
        (blocked_low, blocked_high), (found_low, found_high) = calibration.intervals[name]
        assert blocked_low <= blocked <= blocked_high and found_low <= found <= found_high
    pooled_blocked, pooled_found = calibration.thresholds[POOLED]
    uncalibrated = next(t.system for t in VERIFY_FULL if t.system.name not in calibration.thresholds)
    assert calibration.verdict(uncalibrated, pooled_blocked) == "blocked"
    assert calibration.verdict(uncalibrated, pooled_found) == "still found"
    assert calibration.verdict(uncalibrated, (pooled_blocked + pooled_found) / 2) == "weakened"


def test_calibration_fit_finds_where_the_share_crosses_its_bounds_and_how_firmly():
    # 30 queries whose share of AP rises from 0 to 1 between similarities 0.5 and 0.9, each query's curve shifted a
    # little: the blocked bound (0.25) is crossed near 0.6, the found bound (0.75) near 0.8
    generator = np.random.default_rng(1)
    calibrated, uncalibrated = System(LITE0), System(LITE0, size=512)
    points = []
    for q in range(30):
        shift = generator.normal(0, 0.03)
        for similarity in np.linspace(0.3, 1.0, 15):
            share = float(np.clip((similarity - 0.5 - shift) / 0.4, 0, 1))
            points.append({"system": calibrated.name, "query": f"q{q}", "similarity": float(similarity),
                           "share": share, "original_ap": 0.3})
    # pairs whose tracker hardly finds the unprotected query are left out, whatever their share
    noise = [{"system": calibrated.name, "query": f"n{q}", "similarity": 0.35, "share": 1.5, "original_ap": 0.01}
             for q in range(200)]
    points += noise
    calibration = Calibration.fit(points, [calibrated.name, uncalibrated.name], source="synthetic", rounds=50)
    # a system without pairs gets no thresholds of its own: it takes the pooled ones
    assert set(calibration.thresholds) == {calibrated.name, POOLED} == set(calibration.intervals)
    blocked, found = calibration.thresholds[calibrated.name]
    assert 0.55 <= blocked <= 0.65 and 0.75 <= found <= 0.85
    (blocked_low, blocked_high), (found_low, found_high) = calibration.intervals[calibrated.name]
    assert blocked_low <= blocked <= blocked_high < found_low <= found <= found_high
    assert blocked_high - blocked_low < 0.1  # 30 queries pin the thresholds down
    assert calibration.verdict(calibrated, blocked_low - 0.01) == "blocked"
    assert calibration.firm(calibrated, blocked_low - 0.01) and calibration.firm(calibrated, found_high + 0.01)
    assert not calibration.firm(calibrated, blocked) and not calibration.firm(calibrated, found)
    assert not calibration.firm(uncalibrated, calibration.thresholds[POOLED][1])
    # the same pairs with the hardly-found ones fitted too: their shares pull the curve up where they sit
    assert Calibration.fit(points, [calibrated.name], "synthetic", rounds=1, min_original_ap=0).thresholds[
        calibrated.name][0] < 0.55
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        Calibration.fit(points, [calibrated.name], source="synthetic", rounds=0)


def test_the_chance_level_is_what_photos_of_other_places_retrieve():
    chance = bench_module("chance")
    # six database photos, one per axis; queries 0 and 2 share photo 1 (the same place), query 1 is elsewhere
    gnd = [{"ok": [0, 1], "junk": []}, {"ok": [2, 3], "junk": []}, {"ok": [1, 4], "junk": []}]
    others = chance.unrelated(gnd)
    assert others == [[1], [0, 2], [1]]
    db = np.eye(6, dtype=np.float32)
    queries = db[[0, 2, 4]]  # each query looks like its first positive
    # query 0 replaced by query 1 ranks photo 2 first, then 0, 1, ... (stable order): its positives at 0-based
    # positions 1 and 2; query 1 replaced by query 0 ranks 0, 1, 2, 3 (positives at 2, 3), by query 2 ranks 4, 0,
    # 1, 2, 3 (at 3, 4); query 2 replaced by query 1 ranks 2, 0, 1, 3, 4 (at 2, 4)
    def ap(*positions):
        return average_precision(np.array(positions), 2)
    expected = np.mean([ap(1, 2), np.mean([ap(2, 3), ap(3, 4)]), ap(2, 4)])
    assert chance.chance_map(db, queries, gnd, others) == pytest.approx(expected)


def test_verify_accuracy_counts_a_verdict_right_when_the_real_share_is_in_its_band():
    accuracy = bench_module("verify_accuracy")
    shares = {"blocked": 0.25, "found": 0.75}
    assert [accuracy.band(v, shares) for v in (0.0, 0.25, 0.26, 0.74, 0.75, 1.3)] == \
        ["blocked", "blocked", "weakened", "weakened", "still found", "still found"]
    points = [{"verdict": "blocked", "band": "blocked"}, {"verdict": "blocked", "band": "still found"},
              {"verdict": "weakened", "band": "blocked"}, {"verdict": "still found", "band": "still found"}]
    # per verdict: given, % right; then all pairs, % right, and the pairs two bands off (blocked against found)
    assert accuracy.tally(points) == [2, "50", 1, "0", 1, "100", 4, "50.0", 1]


@pytest.fixture(scope="module")
def quick_describer():
    return SuiteDescriber(tuple(dict.fromkeys(t.system for t in SUITES["quick"])), device="cpu")


def test_check_protection_tells_the_same_photo_from_another_place(photos, quick_describer):
    same = check_protection(photos["all_souls_000013"], photos["all_souls_000013"], describer=quick_describer)
    assert [c.tracker for c in same] == [t.name for t in VERIFY_QUICK]
    assert all(c.similarity > 0.999 and c.verdict == "still found" for c in same)
    other = check_protection(photos["all_souls_000013"], photos["ashmolean_000058"], describer=quick_describer)
    # Another building is never "still found"; the verdicts read similarity on the curve fitted to protected pairs,
    # where a similarity this far from the original's already costs a tracker most of its retrieval.
    assert all(c.verdict in ("blocked", "weakened") and c.similarity < 0.9 for c in other)
    assert any(c.verdict == "blocked" for c in other)
    with pytest.raises(ValueError, match="suite must be one of quick, full"):
        check_protection(photos["all_souls_000013"], photos["all_souls_000013"], "medium")


def test_the_benchmark_database_resumes_where_a_stopped_run_left_it(tmp_path, monkeypatch):
    bench = bench_module("trackers")
    monkeypatch.setattr(bench, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(bench, "DATABASE_CHUNK", 3)
    images = []
    for i in range(8):  # synthetic photos: each one's descriptor is its mean grey level
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((32, 32, 3), 10 * i, np.uint8)).save(images[-1])

    @dataclass(frozen=True)
    class Plain:
        name: str
        whitened: bool = False

    class Describer:
        systems = [Plain("a"), Plain("b")]

        def __init__(self, stop_at=None):
            self.calls, self.stop_at = 0, stop_at

        def describe(self, rgb, systems):
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt
            return {s: np.array([rgb.mean() / 255, float(s.name == "b")], np.float32) for s in systems}

        def fit_whitening(self, db):
            pass

    with pytest.raises(KeyboardInterrupt):
        bench.database(Describer(stop_at=8), images)  # stopped on the 8th image: rows of the first 6 were saved
    resumed = Describer()
    db = bench.database(resumed, images)
    assert resumed.calls == 2 and not list((tmp_path / "cache").rglob("*.partial.npz"))
    expected = np.array([10 * i / 255 for i in range(8)], np.float32)
    for s in Describer.systems:
        assert db[s].shape == (8, 2) and np.allclose(db[s][:, 0], expected)
    again = Describer()
    assert all(np.array_equal(bench.database(again, images)[s], db[s]) for s in Describer.systems) and not again.calls
