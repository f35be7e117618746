"""Tests for advquery.perceptual: colour differences against Sharma et al. and skimage, the
budget maps against slow per-pixel loops."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.color import deltaE_ciede94, deltaE_ciede2000, rgb2lab

from advquery import perceptual
from advquery.perceptual import (SSIMPrice, color_variance_map, delta_e_cie94, delta_e_ciede2000, rgb_to_lab,
                                 ssim_masking_map, ssim_cost_weights, std_map)
from advquery.quality import ssim

# Sharma, Wu and Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data, and mathematical observations", Table 1: L1 a1 b1 L2 a2 b2 dE00.
SHARMA = np.array([
    [50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425],
    [50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615],
    [50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412],
    [50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669],
    [50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461],
    [50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065],
    [50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492],
    [50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977],
    [50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030],
    [50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000],
    [60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644],
    [63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630],
    [61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731],
    [35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645],
    [22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373],
    [36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146],
    [90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441],
    [90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381],
    [6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377],
    [2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082],
])


def _random_lab(n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform([0, -128, -128], [100, 128, 128], (n, 3))


def _srgb_lab(n, seed):
    """Lab of random sRGB colours, (n, 3), through skimage."""
    rgb = np.random.default_rng(seed).uniform(0, 1, (n, 1, 3))
    return rgb2lab(rgb)[:, 0]


def _t(x, dtype=torch.float64):
    return torch.as_tensor(np.asarray(x), dtype=dtype)


# --------------------------------------------------------------------- CIEDE2000 and CIE94


def test_sharma_table_has_34_pairs_and_agrees_with_skimage():
    # Guards the typed table: skimage's validated implementation reproduces every row.
    assert SHARMA.shape == (34, 7)
    np.testing.assert_allclose(deltaE_ciede2000(SHARMA[:, :3], SHARMA[:, 3:6]), SHARMA[:, 6], atol=1e-4)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-4), (torch.float32, 1e-3)])
def test_ciede2000_sharma_table(dtype, tol):
    got = delta_e_ciede2000(_t(SHARMA[:, :3], dtype), _t(SHARMA[:, 3:6], dtype))
    assert got.dtype == dtype and got.shape == (34,)
    np.testing.assert_allclose(got.double().numpy(), SHARMA[:, 6], atol=tol, rtol=0)
    swapped = delta_e_ciede2000(_t(SHARMA[:, 3:6], dtype), _t(SHARMA[:, :3], dtype))
    np.testing.assert_allclose(swapped.double().numpy(), SHARMA[:, 6], atol=tol, rtol=0)


@pytest.mark.parametrize("make", [_random_lab, _srgb_lab], ids=["random-lab", "srgb-lab"])
def test_ciede2000_matches_skimage(make):
    a, b = make(1000, 1), make(1000, 2)
    b[:100] = a[:100] + np.random.default_rng(3).normal(0, 0.3, (100, 3))  # near colours too
    ref = deltaE_ciede2000(a, b)
    np.testing.assert_allclose(delta_e_ciede2000(_t(a), _t(b)).numpy(), ref, atol=1e-8, rtol=0)
    f32 = delta_e_ciede2000(_t(a, torch.float32), _t(b, torch.float32))
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.double().numpy(), ref, atol=1e-3, rtol=0)
    np.testing.assert_allclose(delta_e_ciede2000(_t(a), _t(b), kL=2, kC=1.5, kH=0.7).numpy(),
                               deltaE_ciede2000(a, b, kL=2, kC=1.5, kH=0.7), atol=1e-8, rtol=0)


def test_ciede2000_symmetric_and_zero_on_itself():
    a, b = _t(_random_lab(1000, 4)), _t(_random_lab(1000, 5))
    torch.testing.assert_close(delta_e_ciede2000(a, b), delta_e_ciede2000(b, a), atol=1e-10, rtol=0)
    assert float(delta_e_ciede2000(a, a).abs().max()) < 1e-6


def test_ciede2000_hue_edge_cases():
    # Grey against colour (C'1 C'2 = 0), hues exactly 180 degrees apart (dh = -180, no wrap;
    # dh = +180), hues across 0 whose sum is above and below 360, and a negative zero a or b.
    cases = np.array([
        [50, 0, 0, 60, 0, 0],  # both grey
        [50, 0, 0, 50, 10, -10],
        [50, 10, 0, 50, -10, 0],  # h1 = 0, h2 = 180
        [50, -10, 0, 50, 10, 0],
        [50, 0, 10, 50, 0, -10],  # h1 = 90, h2 = 270
        [50, 5, -0.1, 50, 5, 0.1],  # 359 and 1 degrees: sum < 360 after the wrap
        [50, 5, -1, 50, 6, 2],
        [50, 3, -20, 50, 20, 1],  # far apart across 0
        [50, -3, -20, 50, 3, 20],
        [50, -0.0, -0.0, 50, 1, -1],
        [50, 0.0, -0.0, 50, -1, -1],
    ], dtype=np.float64)
    got = delta_e_ciede2000(_t(cases[:, :3]), _t(cases[:, 3:]))
    np.testing.assert_allclose(got.numpy(), deltaE_ciede2000(cases[:, :3], cases[:, 3:]), atol=1e-8, rtol=0)


def test_ciede2000_broadcasts():
    a = _t(_random_lab(6, 6)).view(2, 3, 3)
    b = _t(_random_lab(1, 7))[0]
    got = delta_e_ciede2000(a, b)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), deltaE_ciede2000(a.numpy(), b.numpy()[None, None]), atol=1e-8)


@pytest.mark.parametrize("make", [_random_lab, _srgb_lab], ids=["random-lab", "srgb-lab"])
def test_cie94_matches_skimage_with_lab1_as_reference(make):
    a, b = make(1000, 8), make(1000, 9)
    b[:100] = a[:100] + np.random.default_rng(10).normal(0, 0.3, (100, 3))
    np.testing.assert_allclose(delta_e_cie94(_t(a), _t(b)).numpy(), deltaE_ciede94(a, b), atol=1e-8, rtol=0)
    np.testing.assert_allclose(delta_e_cie94(_t(b), _t(a)).numpy(), deltaE_ciede94(b, a), atol=1e-8, rtol=0)
    assert not np.allclose(deltaE_ciede94(a, b), deltaE_ciede94(b, a))  # the order matters
    f32 = delta_e_cie94(_t(a, torch.float32), _t(b, torch.float32))
    np.testing.assert_allclose(f32.double().numpy(), deltaE_ciede94(a, b), atol=1e-3, rtol=0)
    textiles = dict(kL=2, k1=0.048, k2=0.014)
    np.testing.assert_allclose(delta_e_cie94(_t(a), _t(b), **textiles).numpy(),
                               deltaE_ciede94(a, b, **textiles), atol=1e-8, rtol=0)


def test_cie94_float32_accurate_for_near_colours():
    # dH^2 = 2 (C1 C2 - a1 a2 - b1 b2) cancels for near, saturated colours; the stable form must not.
    a = _random_lab(1000, 11)
    a[:, 1:] *= 0.5
    b = a + np.random.default_rng(12).normal(0, 0.01, a.shape)
    f32 = delta_e_cie94(_t(a, torch.float32), _t(b, torch.float32)).double().numpy()
    ref = deltaE_ciede94(a, b)
    assert np.abs(f32 - ref).max() < 2e-4


@pytest.mark.parametrize("fn", [delta_e_ciede2000, delta_e_cie94])
def test_delta_e_gradcheck(fn):
    a = _t(_random_lab(12, 15)).requires_grad_()
    b = _t(_random_lab(12, 16)).requires_grad_()
    assert torch.autograd.gradcheck(fn, (a, b))


def test_delta_e_bad_input():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\) Lab"):
        delta_e_ciede2000(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="do not broadcast"):
        delta_e_cie94(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="torch.Tensor"):
        delta_e_ciede2000(np.zeros(3), torch.zeros(3))


# ------------------------------------------------------------------------------ rgb_to_lab


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 4, 6), (2, 2, 3, 3, 3)])
def test_rgb_to_lab_matches_skimage(shape):
    rgb = np.random.default_rng(13).uniform(0, 1, shape)
    rgb.reshape(-1)[:20] = np.linspace(0, 0.06, 20)  # both sides of the 0.04045 gamma knee
    ref = np.moveaxis(rgb2lab(np.moveaxis(rgb, -3, -1)), -1, -3)
    got = rgb_to_lab(_t(rgb))
    assert got.shape == shape and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4, rtol=0)
    got32 = rgb_to_lab(_t(rgb, torch.float32))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), ref, atol=2e-3, rtol=0)


def test_rgb_to_lab_gradcheck():
    rgb = torch.rand(1, 3, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.05
    assert torch.autograd.gradcheck(rgb_to_lab, (rgb.requires_grad_(),))


def test_rgb_to_lab_bad_shape():
    with pytest.raises(ValueError, match=r"\(\*, 3, H, W\)"):
        rgb_to_lab(torch.zeros(1, 4, 2, 2))


# ---------------------------------------------------------------------------------- maps


def _loop_color_variance(rgb, n, sigma, metric):
    """Thesis Algorithm 1 read literally: one skimage call per pixel pair. rgb: (H, W, 3) float64."""
    lab = rgb2lab(rgb)
    diff = deltaE_ciede2000 if metric == "ciede2000" else deltaE_ciede94
    h, w = lab.shape[:2]
    d = n // 2
    pv = np.zeros((h, w))
    for yi in range(h):
        for xi in range(w):
            total, count = 0.0, 0
            for y in range(yi - d, yi + d + 1):
                for x in range(xi - d, xi + d + 1):
                    if not (0 <= y < h and 0 <= x < w):
                        continue  # out of the image: skipped, not counted
                    g = math.exp(-((x - xi) ** 2 + (y - yi) ** 2) / (2 * sigma ** 2)) / (2 * math.pi * sigma ** 2)
                    total += (g * float(diff(lab[y, x], lab[yi, xi]))) ** 2  # dE(P_nb, P_center)
                    count += 1
            pv[yi, xi] = math.sqrt(total / count)
    return pv / pv.max() if pv.max() > 0 else pv


def _loop_std(rgb, n):
    y = rgb @ np.array(perceptual.BT709)
    h, w = y.shape
    d = n // 2
    out = np.array([[y[max(0, i - d):i + d + 1, max(0, j - d):j + d + 1].std() for j in range(w)] for i in range(h)])
    return out / out.max() if out.max() > 0 else out


def _nchw(rgb, dtype=torch.float64):
    return torch.as_tensor(np.moveaxis(rgb, -1, 0)[None].copy(), dtype=dtype)


@pytest.fixture(scope="module")
def small_rgb():
    return np.random.default_rng(14).uniform(0, 1, (9, 11, 3))


@pytest.mark.parametrize("n, sigma, metric", [(5, 1.0, "ciede2000"), (3, 1.0, "ciede2000"), (5, 1.7, "cie94"),
                                              (3, 0.8, "cie94")])
def test_color_variance_map_matches_per_pixel_loop(small_rgb, n, sigma, metric):
    ref = _loop_color_variance(small_rgb, n, sigma, metric)
    got = color_variance_map(_nchw(small_rgb), n=n, sigma=sigma, metric=metric)
    assert got.shape == (1, 1, 9, 11) and got.dtype == torch.float64
    np.testing.assert_allclose(got[0, 0].numpy(), ref, atol=1e-5, rtol=0)
    assert float(got.max()) == pytest.approx(1.0, abs=1e-12)
    got32 = color_variance_map(_nchw(small_rgb, torch.float32), n=n, sigma=sigma, metric=metric)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32[0, 0].double().numpy(), ref, atol=1e-4, rtol=0)


def test_color_variance_map_border_counts():
    # One red pixel in the corner of a grey 6 x 7 image, n = 3: each pixel's sum holds
    # (g dE)^2 for the pairs it forms with the corner; the counts are 4 (corner), 6 (edge), 9.
    img = np.full((6, 7, 3), 0.5)
    img[0, 0] = (1.0, 0.0, 0.0)
    de = float(deltaE_ciede2000(rgb2lab(img[:1, :1])[0, 0], rgb2lab(img[1:2, 1:2])[0, 0]))
    g1, g2 = (math.exp(-k / 2) / (2 * math.pi) for k in (1, 2))  # sigma 1, distances 1 and sqrt(2)
    m = color_variance_map(_nchw(img), n=3)[0, 0].numpy()
    corner = math.sqrt((2 * g1 ** 2 + g2 ** 2) * de ** 2 / 4)
    expect = {(0, 0): 1.0, (0, 1): math.sqrt(g1 ** 2 * de ** 2 / 6) / corner,
              (1, 0): math.sqrt(g1 ** 2 * de ** 2 / 6) / corner, (1, 1): math.sqrt(g2 ** 2 * de ** 2 / 9) / corner,
              (0, 2): 0.0, (2, 2): 0.0}
    for (i, j), v in expect.items():
        assert m[i, j] == pytest.approx(v, abs=1e-9), (i, j)


def test_color_variance_map_flat_image_is_zero_and_batch_is_per_image(small_rgb):
    flat = torch.full((1, 3, 9, 11), 0.3, dtype=torch.float64)
    assert float(color_variance_map(flat).abs().max()) == 0.0
    assert float(color_variance_map(flat, metric="cie94").abs().max()) == 0.0
    one = _nchw(small_rgb)
    dim = one * 0.2  # weaker contrast: its own maximum still maps to 1
    batch = color_variance_map(torch.cat([one, dim, flat]))
    torch.testing.assert_close(batch[0], color_variance_map(one)[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(batch[1], color_variance_map(dim)[0], atol=1e-12, rtol=0)
    assert float(batch[1].max()) == pytest.approx(1.0) and float(batch[2].abs().max()) == 0.0


@pytest.mark.parametrize("value", [0.3, 0.123456, 1.0])
def test_constant_float32_image_gives_zero_maps(value):
    # Odd sizes put pixels in both the vectorised body and the scalar tail of torch's loops, whose
    # float32 pow can differ by an ulp: rounding noise must not be scaled up to 1.
    flat = torch.full((2, 3, 37, 53), value)
    assert float(color_variance_map(flat).abs().max()) == 0.0
    assert float(color_variance_map(flat, metric="cie94").abs().max()) == 0.0
    assert float(std_map(flat).abs().max()) == 0.0


def test_color_variance_map_bands_do_not_change_the_result(small_rgb, monkeypatch):
    x = torch.cat([_nchw(small_rgb), _nchw(small_rgb[::-1].copy())])
    whole = color_variance_map(x, metric="cie94"), color_variance_map(x)
    monkeypatch.setattr(perceptual, "_BAND_ELEMENTS", 1)  # one row per band
    torch.testing.assert_close(color_variance_map(x, metric="cie94"), whole[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(color_variance_map(x), whole[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 3, 1, 6), (1, 3, 5, 1), (2, 3, 2, 2)])
def test_color_variance_map_tiny_images(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rgb = np.moveaxis(x[0].numpy(), 0, -1)
    np.testing.assert_allclose(color_variance_map(x)[0, 0].numpy(), _loop_color_variance(rgb, 5, 1.0, "ciede2000"),
                               atol=1e-9)


@pytest.mark.parametrize("fn", [color_variance_map, std_map])
def test_maps_keep_dtype_and_device_and_need_no_grad(fn):
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    for dtype in (torch.float32, torch.float64, torch.float16):
        out = fn(x.detach().to(dtype))
        assert out.dtype == dtype and out.device == x.device and out.shape == (1, 1, 6, 5)
    assert not fn(x).requires_grad
    if torch.cuda.is_available():
        out = fn(x.detach().cuda())
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), fn(x.detach()), atol=1e-4, rtol=0)


@pytest.mark.parametrize("n", [3, 5])
def test_std_map_matches_per_pixel_loop(small_rgb, n):
    ref = _loop_std(small_rgb, n)
    got = std_map(_nchw(small_rgb), n=n)
    assert got.shape == (1, 1, 9, 11)
    np.testing.assert_allclose(got[0, 0].numpy(), ref, atol=1e-10, rtol=0)
    got32 = std_map(_nchw(small_rgb, torch.float32), n=n)
    np.testing.assert_allclose(got32[0, 0].double().numpy(), ref, atol=1e-5, rtol=0)


def test_std_map_uses_bt709_luminance():
    # A black | green edge (rows 0-3) and a black | blue edge of the same step (rows 8-11).
    img = torch.zeros(1, 3, 12, 8)
    img[0, 1, :4, 4:] = 1.0
    img[0, 2, 8:, 4:] = 1.0
    m = std_map(img)[0, 0]  # the blue block is the green one flipped upside down
    assert float(m[:4].max()) == 1.0
    torch.testing.assert_close(m[8:].flip(0), m[:4] * (0.0722 / 0.7152), atol=1e-6, rtol=0)  # Rec.601: 0.114 / 0.587
    assert float(std_map(torch.full((1, 3, 5, 5), 0.7)).abs().max()) == 0.0


@pytest.mark.parametrize("fn", [color_variance_map, std_map])
def test_maps_bad_input(fn):
    good = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) float in \[0, 1\], got \(3, 4, 4\)"):
        fn(good[0])
    with pytest.raises(ValueError, match=r"got \(1, 3, 4, 4\) torch.uint8"):
        fn((good * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        fn(good * 255)
    for n in (4, 1, 2, 3.0, True):
        with pytest.raises(ValueError, match="odd integer >= 3"):
            fn(good, n=n)


def test_color_variance_map_bad_parameters():
    good = torch.rand(1, 3, 4, 4)
    for sigma in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="sigma must be a positive number"):
            color_variance_map(good, sigma=sigma)
    with pytest.raises(ValueError, match="metric must be one of"):
        color_variance_map(good, metric="cie76")


def test_ssim_masking_map_gains():
    """Gain 1 where the SSIM window is flat, sqrt(1 + 2 s^2 / C2) elsewhere, capped at max_gain."""
    flat = torch.full((1, 3, 16, 16), 0.4)
    torch.testing.assert_close(ssim_masking_map(flat), torch.ones_like(flat))
    stripes = flat.clone()
    stripes[..., ::2] = 0.6  # columns alternate 0.4 / 0.6: s about 0.1 * 255 = 25.5 levels
    gain = ssim_masking_map(stripes, max_gain=100)
    expected = (1 + 2 * 25.5 ** 2 / (0.03 * 255) ** 2) ** 0.5
    assert abs(float(gain[..., 6:10, 6:10].mean()) - expected) < 0.1 * expected
    assert float(ssim_masking_map(stripes, max_gain=2).max()) == 2.0
    with pytest.raises(ValueError, match="max_gain must be >= 1"):
        ssim_masking_map(flat, max_gain=0.5)



def test_ssim_cost_weights_approximate_the_ssim_loss_of_small_changes():
    """mean(w d^2) is 1 - SSIM (quality.ssim) to first order, for noise-like changes of one or two levels."""
    rng = np.random.default_rng(1)
    a = ndimage.uniform_filter(rng.integers(0, 256, (60, 64, 3)).astype(float), (7, 7, 1)).astype(np.uint8)
    weights = ssim_cost_weights(torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255)[0].permute(1, 2, 0).numpy()
    for levels in (1, 2):
        d = rng.choice([-levels, levels], a.shape)
        b = np.clip(a.astype(int) + d, 0, 255).astype(np.uint8)
        change = b.astype(float) - a
        assert float((weights * change ** 2).mean()) == pytest.approx(1 - ssim(a, b), rel=0.15)
    flat = torch.full((1, 3, 16, 16), 0.5)
    torch.testing.assert_close(ssim_cost_weights(flat), torch.full_like(flat, 1 / (0.03 * 255) ** 2))


@pytest.mark.parametrize("shape,weight", [((1, 3, 64, 48), 17), ((2, 3, 33, 70), 150.0), ((1, 3, 101, 37), 17.3)])
def test_ssim_price_and_its_gradient_are_autograds_to_the_bit(shape, weight):
    """The price and the gradient SSIMPrice computes without a graph are those of autograd's graph of the same
    expression, bit for bit (any weight, batches of photos, odd sizes), and the input is left as it was."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(shape, generator=g)
    pixels = (x + (torch.rand(shape, generator=g) - 0.5) * 0.06).clamp(0, 1).requires_grad_()
    cost = ssim_cost_weights(x) * 255 ** 2  # per squared [0, 1] unit
    expected = weight * ((pixels - x).pow(2) * cost).mean(dim=(1, 2, 3))
    expected.sum().backward()
    before = pixels.detach().clone()
    price, gradient = SSIMPrice(x, weight)(pixels.detach())
    assert torch.equal(price, expected.detach()) and torch.equal(gradient, pixels.grad)
    assert torch.equal(pixels.detach(), before) and price.shape == (shape[0],)
    with pytest.raises(ValueError, match="positive"):
        SSIMPrice(x, 0)


def test_monochrome_tells_black_and_white_photos_within_two_levels():
    grey = torch.rand(1, 1, 16, 16).expand(1, 3, 16, 16) * 0.9 + 0.05
    tinted = grey.clone()
    tinted[:, 0] += 2 / 255  # a black-and-white photo saved in colour: channels a level or two apart
    coloured = grey.clone()
    coloured[0, 2, 3, 4] += 3 / 255  # one pixel three levels apart is colour
    assert perceptual.monochrome(torch.cat([grey, tinted, coloured])).tolist() == [True, True, False]
    with pytest.raises(ValueError, match=r"expected image as \(N, 3, H, W\)"):
        perceptual.monochrome(torch.rand(1, 1, 4, 4))


def test_share_channels_sets_the_chosen_images_to_their_channel_mean():
    t = torch.rand(2, 3, 5, 5)
    before = t.clone()
    perceptual.share_channels(t, torch.tensor([True, False]))
    assert torch.allclose(t[0], before[0].mean(dim=0, keepdim=True).expand(3, 5, 5))
    assert torch.equal(t[1], before[1])
