"""Tests for advquery.quality: SSIM against skimage, PSNR against its formula, hand-made differences."""
import math

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from advquery import quality
from advquery.quality import (flat_changed, flat_pixels, linf, mean_abs_change, mean_ciede2000, psnr, quality_report,
                              ssim)


def _skimage_ssim(a, b):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 channel_axis=2, data_range=255)


def _noisy(a, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, a.shape)
    return np.clip(np.rint(a + noise), 0, 255).astype(np.uint8)


def _synthetic(h, w, seed=0):
    """A smooth colour gradient with texture, not just white noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1), 128 + 60 * np.sin(xx / 3.0)], axis=2)
    return _noisy(base, 20, seed)


@pytest.mark.parametrize("name", ["ukbench00000.jpg", "ukbench00013.jpg"])
def test_ssim_matches_skimage_on_real_photos(ukbench_dir, name):
    with Image.open(ukbench_dir / name) as img:
        a = np.array(img.convert("RGB"))
    for sigma in (2, 8):
        b = _noisy(a, sigma, seed=sigma)
        assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-4)


@pytest.mark.parametrize("shape", [(40, 33), (33, 40), (11, 11), (64, 48), (97, 130)])
def test_ssim_matches_skimage_on_synthetic(shape):
    a = _synthetic(*shape)
    for b in (_noisy(a, 5, 1), _synthetic(*shape, seed=7), 255 - a, np.zeros_like(a)):
        assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-4)


def test_ssim_independent_of_band_size(monkeypatch):
    a = _synthetic(150, 37)
    b = _noisy(a, 10, 3)
    expected = _skimage_ssim(a, b)
    monkeypatch.setattr(quality, "_BAND_PIXELS", 1)  # 16-row bands: many band edges
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)


def test_identical_images():
    a = _synthetic(40, 33)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert psnr(a, a) == math.inf
    assert linf(a, a) == 0.0 and mean_abs_change(a, a) == 0.0
    assert mean_ciede2000(a, a) == pytest.approx(0.0, abs=1e-9)


def test_ssim_too_small():
    a = np.zeros((10, 20, 3), np.uint8)
    with pytest.raises(ValueError, match=r"at least 11 x 11 pixels for SSIM, got 20 x 10"):
        ssim(a, a)


def test_psnr_against_formula():
    a = _synthetic(40, 33)
    b = _noisy(a, 6, 4)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / mse), rel=1e-12)
    zeros, full = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert psnr(zeros, full) == pytest.approx(0.0, abs=1e-12)
    assert isinstance(psnr(a, b), float)


def test_linf_and_mean_abs_on_hand_made_arrays():
    a = np.zeros((2, 3, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # a uint8 wrap-around bug would give 1 for 0 - 255
    b[1, 2, 1] = 3
    a[1, 1, 2] = 10
    assert linf(a, b) == 255.0 and linf(b, a) == 255.0
    assert mean_abs_change(a, b) == pytest.approx((255 + 3 + 10) / 18)
    assert isinstance(linf(a, b), float)


def test_ciede2000_known_pair():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    darker = red.copy()
    darker[..., 0] = 250
    blue = np.zeros_like(red)
    blue[..., 2] = 255
    small, large = mean_ciede2000(red, darker), mean_ciede2000(red, blue)
    assert 0 < small < 2 < large  # a 5-level change is near the visibility threshold; red vs blue is far
    assert large == pytest.approx(52.88, abs=0.05)  # sRGB red vs blue, D65
    half = red.copy()
    half[0] = blue[0]
    assert mean_ciede2000(red, half) == pytest.approx(large / 2)


def test_quality_report_keys_and_types():
    a = _synthetic(40, 33)
    b = _noisy(a, 3, 5)
    report = quality_report(a, b)
    assert list(report) == ["ssim", "psnr", "linf", "mean_abs_change", "ciede2000", "flat_changed"]
    assert all(type(v) is float for v in report.values())
    assert report["ssim"] == ssim(a, b) and report["ciede2000"] == mean_ciede2000(a, b)


def test_quality_report_in_threads_gives_the_same_values(ukbench_dir):
    with Image.open(ukbench_dir / "ukbench00004.jpg") as img:
        a = np.asarray(img.convert("RGB"))
    b = _noisy(a, 2)
    assert quality_report(a, b, threads=3) == quality_report(a, b)
    with pytest.raises(ValueError, match="expected a positive number of threads, got 0"):
        quality_report(a, b, threads=0)


@pytest.mark.parametrize("fn", [ssim, psnr, linf, mean_abs_change, mean_ciede2000, quality_report])
def test_shape_mismatch(fn):
    a, b = np.zeros((40, 33, 3), np.uint8), np.zeros((33, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"expected images of equal shape, got \(40, 33, 3\) and \(33, 40, 3\)"):
        fn(a, b)


def test_wrong_dtype_or_layout():
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match=r"expected b as a \(H, W, 3\) uint8 array, got \(20, 20, 3\) float64"):
        ssim(a, a.astype(np.float64))
    with pytest.raises(ValueError, match=r"expected a as a \(H, W, 3\) uint8 array, got \(20, 20\) uint8"):
        psnr(a[..., 0], a[..., 0])


def test_flat_changed_counts_changes_in_flat_regions_only():
    a = np.full((40, 40, 3), 120, np.uint8)
    a[:, 20:] = (np.arange(20 * 40 * 3).reshape(40, 20, 3) * 37 % 200).astype(np.uint8)  # right half: texture
    flat = flat_pixels(a)
    assert flat[:, :14].all() and not flat[:, 24:].any()  # the 7 x 7 window sees the texture 3 pixels away
    b = a.copy()
    b[:, 20:] = 255 - b[:, 20:]  # any change in texture does not count
    assert flat_changed(a, b) == 0
    b[:10, :10] += 2  # 2 levels on a quarter of the flat rows' first half
    assert flat_changed(a, b) == pytest.approx(100 / flat.sum())
    b[:10, :10] -= 1  # 1 level does not count
    assert flat_changed(a, b) == 0
