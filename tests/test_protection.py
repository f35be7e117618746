"""The protection core: output format and path rules, presets behind make_attack, report records."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from advquery import PIRE, SSIMPIRE, load_model
from advquery.io import Photo
from advquery.attacks import KeypointAttack, MaskedPIRE
from advquery.models import ModelEnsemble
from advquery.protection import (DEFAULT_METHOD, GRADIENT_METHODS, MASK_GAIN, STRENGTHS, ProtectionRecord, make_attack, output_format,
                                 output_path)
from advquery.transforms import jpeg_round_trip


def _photo(fmt: str, name: str = "x") -> Photo:
    return Photo(path=Path(name), rgb=np.zeros((32, 32, 3), np.uint8), alpha=None, format=fmt, exif=None,
                 icc_profile=None)


@pytest.fixture(scope="module")
def model():
    return load_model("efficientnet-lite0-gem", device="cpu")


@pytest.mark.parametrize("fmt, expected", [
    ("JPEG", "JPEG"), ("PNG", "PNG"), ("TIFF", "PNG"), ("BMP", "PNG"), ("WEBP", "PNG"),
])
def test_output_format_default_keeps_jpeg_else_lossless_png(fmt, expected):
    assert output_format(_photo(fmt), None) == expected


@pytest.mark.parametrize("requested, expected", [("jpg", "JPEG"), ("JPG", "JPEG"), ("jpeg", "JPEG"), ("png", "PNG")])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_output_format_requested_wins(fmt, requested, expected):
    assert output_format(_photo(fmt), requested) == expected


@pytest.mark.parametrize("relative, fmt, expected", [
    ("x.jpg", "JPEG", "x.jpg"),
    ("x.jpeg", "JPEG", "x.jpeg"),  # an existing JPEG suffix is kept as the user wrote it
    ("x.JPG", "JPEG", "x.JPG"),
    ("sub/x.png", "PNG", "sub/x.png"),
    ("x.tif", "PNG", "x.png"),
    ("x.bmp", "PNG", "x.png"),
    ("x.jpg", "PNG", "x.png"),
    ("x.png", "JPEG", "x.jpg"),
    ("a/b/x.webp", "PNG", "a/b/x.png"),
])
def test_output_path_suffix_rules(tmp_path, relative, fmt, expected):
    assert output_path(tmp_path, Path(relative), fmt) == tmp_path / expected


def test_make_attack_rejects_unknown_method_and_strength(model):
    with pytest.raises(ValueError, match=r"unknown method 'fgsm'; available: ssim-pire, pire"):
        make_attack(model, method="fgsm")
    with pytest.raises(ValueError, match=r"unknown strength 'max'; available: low, medium, high"):
        make_attack(model, strength="max")


def test_a_later_field_shows_in_a_presets_repr_only_where_set(model):
    medium = STRENGTHS["medium"]
    assert "grey_change" not in repr(medium)  # the benchmarks' caches and recorded definitions keep their keys
    grey = replace(medium, grey_change=True)
    assert repr(grey) == repr(medium)[:-1] + ", grey_change=True)"
    assert make_attack(model, strength=grey).grey_change and not make_attack(model, strength=medium).grey_change
    assert "gradient_blur" not in repr(medium)
    blurred = replace(medium, gradient_blur=1.5)
    assert repr(blurred) == repr(medium)[:-1] + ", gradient_blur=1.5)"
    assert make_attack(model, strength=blurred).gradient_blur == 1.5
    assert make_attack(model, strength=medium).gradient_blur == 0


@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_make_attack_follows_the_preset(model, strength):
    preset = STRENGTHS[strength]
    attack = make_attack(model, method="pire", strength=strength, size=96, seed=3)
    assert isinstance(attack, PIRE) and attack.ssim_weight == 0
    assert attack.eps == pytest.approx(preset.eps_levels / 255)
    assert (attack.steps, attack.target_similarity, attack.patience) == \
        (preset.steps, preset.target_similarity, preset.patience)
    assert (attack.size, attack.seed, attack.codec, attack.edits) == (96, 3, None, None)
    assert attack.tracker_views == preset.views and attack.poolings == preset.poolings
    assert attack.spare_flat == preset.spare_flat and attack.whole_view == preset.whole_view
    if preset.models:  # aimed at the other built-in models too
        assert isinstance(attack.model, ModelEnsemble)
        assert [m.name for m in attack.model.members] == [model.name, *preset.models]
    else:
        assert attack.model is model


def test_every_preset_runs_ssim_pire_unless_told(model):
    assert DEFAULT_METHOD == "ssim-pire"
    assert all(isinstance(make_attack(model, strength=s, size=96), SSIMPIRE) for s in STRENGTHS)
    medium = make_attack(model, method="pire", strength="medium", size=96)
    assert isinstance(medium, PIRE) and not isinstance(medium, SSIMPIRE)


def test_a_strength_of_ones_own_is_run_like_a_preset(model):
    own = replace(STRENGTHS["medium"], ssim_eps_levels=5, steps=3, models=())
    attack = make_attack(model, strength=own, size=96)
    assert attack.eps == pytest.approx(5 / 255) and attack.steps == 3 and attack.model is model
    assert attack.tracker_views == STRENGTHS["medium"].views
    assert attack.view_reference == "view"
    photo = replace(own, view_reference="photo", poolings=("gem", "rmac"))  # the feature map needs the view's own
    assert make_attack(model, strength=photo, size=96).view_reference == "photo"


def test_presets_grow_in_budget_and_robustness():
    low, medium, high = (STRENGTHS[s] for s in ("low", "medium", "high"))
    assert low.eps_levels < medium.eps_levels < high.eps_levels
    assert low.ssim_eps_levels < medium.ssim_eps_levels <= high.ssim_eps_levels  # ssim-pire: a wider bound,
    assert low.ssim_weight > medium.ssim_weight >= high.ssim_weight  # and SSIM priced lower
    assert low.views is not None and medium.views is not None and high.views is not None  # every preset: flips, crops
    assert low.views.jpeg is None and medium.views.jpeg is not None  # low: not through re-compressed copies
    assert len(low.models) <= len(medium.models) <= len(high.models)
    assert medium.views.shrink is None and high.views.shrink is not None  # high: also queries shrunk to thumbnails


def test_presets_keep_their_perturbation_grid_at_any_working_size(model):
    # low: the working resolution; medium and high: a grid of at most 512 px (2x coarser at 1024 px)
    for size, expected in ((512, {"low": 1, "medium": 1, "high": 1}), (1024, {"low": 1, "medium": 2, "high": 2}),
                           (2048, {"low": 1, "medium": 4, "high": 4})):
        assert {s: make_attack(model, strength=s, size=size).coarseness for s in STRENGTHS} == expected
    assert make_attack(model, strength="medium", size=1024, coarseness=1).coarseness == 1  # explicit override
    assert make_attack(model, method="masked-pire", size=1024).coarseness == 2
    assert make_attack(model, method="cv-pire", size=1024).coarseness == 1  # the thesis's per-pixel map


@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_make_attack_ssim_pire_follows_its_preset_bound_and_price(model, strength):
    preset = STRENGTHS[strength]
    attack = make_attack(model, method="ssim-pire", strength=strength, size=96, seed=3)
    assert isinstance(attack, SSIMPIRE)
    assert attack.eps == pytest.approx(preset.budget_levels("ssim-pire") / 255) and attack.ssim_weight == preset.ssim_weight
    assert preset.budget_levels("pire") == preset.eps_levels
    assert (attack.steps, attack.patience, attack.tracker_views) == (preset.steps, preset.patience, preset.views)
    assert attack.target_similarity is None  # its objective already weighs effect against SSIM
    overridden = make_attack(model, method="ssim-pire", strength=strength, eps_levels=2, ssim_weight=50, size=96)
    assert overridden.eps == pytest.approx(2 / 255) and overridden.ssim_weight == 50
    with pytest.raises(ValueError, match="ssim_weight applies to ssim-pire only, not to pire"):
        make_attack(model, method="pire", ssim_weight=50)
    with pytest.raises(ValueError, match=r"ssim_weight must be positive \(0 is pire\), got 0"):
        make_attack(model, method="ssim-pire", ssim_weight=0)


def test_make_attack_masked_pire(model):
    attack = make_attack(model, method="masked-pire", strength="low", eps_levels=2, size=96)
    assert isinstance(attack, MaskedPIRE) and attack.eps == pytest.approx(2 / 255) and attack.max_gain == MASK_GAIN


def test_make_attack_overrides(model):
    attack = make_attack(model, eps_levels=3, steps=7, size=96)
    assert attack.eps == pytest.approx(3 / 255) and attack.steps == 7 and attack.codec is None


def test_a_jpeg_output_is_optimised(model):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for method in GRADIENT_METHODS:  # the attack optimises the JPEG it is saved as
        codec = make_attack(model, method=method, strength="low", size=96, jpeg_quality=90).codec
        assert torch.equal(codec(x), jpeg_round_trip(x, 90)) and not torch.equal(codec(x), jpeg_round_trip(x, 95))
    assert make_attack(model, strength="low", size=96).codec is None  # lossless output
    assert make_attack(model, strength="medium", size=96, jpeg_quality=90).codec is not None  # its views see the file
    assert make_attack(model, method="cv-pire", size=96, jpeg_quality=90).codec is not None  # the thesis methods too
    assert isinstance(make_attack(model, method="rmd", jpeg_quality=90), KeypointAttack)  # nothing to optimise


def test_record_to_json_turns_infinite_psnr_into_null():
    record = ProtectionRecord("a.png", "out/a.png", ssim=1.0, psnr=float("inf"), linf=0.0, mean_abs_change=0.0,
                              similarity=1.0, steps=0, seconds=0.1)
    data = record.to_json()
    assert data["psnr"] is None and data["ssim"] == 1.0 and data["status"] == "protected"
    json.dumps(data, allow_nan=False)  # strictly valid JSON
    assert ProtectionRecord("a.png", psnr=42.5).to_json()["psnr"] == 42.5


def test_make_attack_thesis_methods(model):
    from advquery.attacks import CVPIRE, SDPIRE
    cv = make_attack(model, method="cv-pire")
    assert isinstance(cv, CVPIRE) and cv.m == 50 and cv.steps == 100
    sd = make_attack(model, method="sd-pire", eps_levels=10, steps=7)
    assert isinstance(sd, SDPIRE) and sd.m == 10 and sd.steps == 7


def test_make_attack_model_free_methods(model):
    from advquery.attacks import GaussianNoise, KeypointAttack
    from advquery.protection import DEFAULT_NOISE_SSIM
    for method in ("rmd", "ls", "fmd", "rmd+ls", "ls+fmd"):
        attack = make_attack(model, method=method, strength="high")  # the preset does not apply
        assert isinstance(attack, KeypointAttack) and attack.method == method
    noise = make_attack(model, method="noise", seed=1)
    assert isinstance(noise, GaussianNoise) and (noise.target_ssim, noise.seed) == (DEFAULT_NOISE_SSIM, 1)
    assert make_attack(model, method="noise", target_ssim=0.9).target_ssim == 0.9
    with pytest.raises(ValueError, match="target_ssim applies to the noise method only, not to ssim-pire"):
        make_attack(model, target_ssim=0.9)
    with pytest.raises(ValueError, match="eps_levels and steps apply to ssim-pire, pire, masked-pire, cv-pire, sd-pire only, not to rmd"):
        make_attack(model, method="rmd", steps=3)
