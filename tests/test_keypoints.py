"""Keypoint removal and injection (KR&I) on a synthetic scene, and the Gaussian-noise baseline.

The keypoint checks run OpenCV's SIFT on OpenCV's own grey conversion, independently of the module.
"""
import cv2
import numpy as np
import pytest
import torch

from advquery.attacks import GaussianNoise, KeypointAttack
from advquery.attacks.keypoints import METHODS, grey_levels, recover_colour
from advquery.io import read_photo, to_tensor, to_uint8
from advquery.quality import ssim
from helpers import blob_scene, on_grid


def _sift(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) positions and (K,) scales (size / 2) of OpenCV SIFT keypoints, one per position and scale."""
    found = cv2.SIFT_create().detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), None)
    rows = np.unique(np.array([(*k.pt, k.size / 2) for k in found]).reshape(-1, 3), axis=0)
    return rows[:, :2], rows[:, 2]


def _close(a, b) -> np.ndarray:
    """For each keypoint of ``a``: whether ``b`` has one within max(1.5 px, sigma / 2) and half an octave."""
    (pa, sa), (pb, sb) = a, b
    if not len(sb):
        return np.zeros(len(sa), bool)
    dist = np.linalg.norm(pa[:, None] - pb[None], axis=2)
    octaves = np.abs(np.log2(sb[None] / sa[:, None]))
    return ((dist <= np.maximum(1.5, sa[:, None] / 2)) & (octaves <= 0.5)).any(axis=1)


def _far(a, b, distance: float = 8) -> int:
    """How many keypoints of ``a`` are farther than ``distance`` pixels from every keypoint of ``b``."""
    return int((np.linalg.norm(a[0][:, None] - b[0][None], axis=2).min(axis=1) > distance).sum())


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return blob_scene()


@pytest.fixture(scope="module")
def attacked(scene):
    """Every method on the scene (FMD: one new keypoint per original one): {method: (output, stats)}."""
    x = to_tensor(scene)
    before = x.clone()
    results = {}
    for method in METHODS:
        attack = KeypointAttack(method, inject=1.0)
        results[method] = attack(x), attack.stats
        assert torch.equal(x, before), f"{method} modified its input"
    return results


# ------------------------------------------------------------------------------ removal and injection


@pytest.mark.parametrize("method, most_kept", [("rmd", 0.2), ("ls", 0.4), ("rmd+ls", 0.1), ("ls+fmd", 0.4)])
def test_removal_drops_the_original_keypoints(scene, attacked, method, most_kept):
    before, after = _sift(scene), _sift(to_uint8(attacked[method][0]))
    assert len(before[1]) >= 15
    assert _close(before, after).mean() <= most_kept


@pytest.mark.parametrize("method", ["fmd", "ls+fmd"])
def test_injection_adds_keypoints_far_from_the_original_ones(scene, attacked, method):
    before, after = _sift(scene), _sift(to_uint8(attacked[method][0]))
    assert _far(after, before) >= 0.3 * len(before[1])
    if method == "fmd":  # injection alone keeps the original keypoints
        assert _close(before, after).mean() >= 0.8


def test_stats_count_removed_and_injected(attacked):
    for method, (_, stats) in attacked.items():
        assert all(len(v) == 1 for v in vars(stats).values())
        before, removed, injected = stats.before[0], stats.removed[0], stats.injected[0]
        assert before >= 15 and 0 <= removed <= before and 0 <= injected <= stats.after[0], method
    assert attacked["rmd"][1].removed[0] >= 0.8 * attacked["rmd"][1].before[0]
    assert attacked["fmd"][1].removed[0] <= 2 and attacked["fmd"][1].injected[0] >= 0.5 * attacked["fmd"][1].before[0]
    assert attacked["ls+fmd"][1].removed[0] >= 0.5 * attacked["ls+fmd"][1].before[0]
    assert attacked["ls+fmd"][1].injected[0] >= 0.5 * attacked["ls+fmd"][1].before[0]


@pytest.mark.parametrize("method", METHODS)
def test_output_contract(scene, attacked, method):
    out = attacked[method][0]
    assert out.shape == (1, 3, *scene.shape[:2]) and out.dtype == torch.float32
    assert on_grid(out) and out.min() >= 0 and out.max() <= 1
    assert (to_uint8(out) != scene).any()


def test_colour_recovery_keeps_hue(scene, attacked):
    out = to_uint8(attacked["ls+fmd"][0])
    assert np.abs(grey_levels(out) - grey_levels(scene)).mean() > 1  # the grey image really changed
    ok = (out.max(axis=2) < 255) & (scene.min(axis=2) >= 20)  # not saturated, ratios not dominated by rounding
    assert ok.mean() > 0.9

    def chroma(img):
        return img[ok] / img[ok].sum(axis=1, keepdims=True, dtype=float)
    assert np.abs(chroma(out) - chroma(scene)).max() <= 0.01


def test_recover_colour_gives_the_modified_grey():
    rng = np.random.default_rng(0)
    rgb = rng.integers(30, 200, (20, 30, 3), dtype=np.uint8)
    rgb[0, 0] = 0  # black: takes the modified grey in every channel
    grey = grey_levels(rgb) + rng.uniform(-15, 15, rgb.shape[:2]).astype(np.float32)
    out = recover_colour(rgb, grey)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.abs(grey_levels(out)[1:] - grey[1:]).max() <= 0.5
    assert (out[0, 0] == np.round(grey[0, 0])).all()


def test_batch_images_are_attacked_independently():
    a, b = blob_scene(seed=1), blob_scene(seed=2)
    attack = KeypointAttack("rmd", rounds=1)
    both = attack(torch.cat([to_tensor(a), to_tensor(b)]))
    batch_stats = attack.stats
    assert len(batch_stats.removed) == 2
    single = attack(to_tensor(b))
    assert torch.equal(both[1:], single) and batch_stats.removed[1:] == attack.stats.removed


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "sift"}, "method must be one of rmd, ls, fmd, rmd\\+ls, ls\\+fmd; got 'sift'"),
    ({"rounds": 0}, "rounds must be a positive integer"),
    ({"rounds": 1.5}, "rounds must be a positive integer"),
    ({"margin": 0}, r"margin must be in \(0, 1\)"),
    ({"margin": 1}, r"margin must be in \(0, 1\)"),
    ({"ls_blur": 0}, "ls_blur and ls_window must be positive"),
    ({"ls_window": -1}, "ls_blur and ls_window must be positive"),
    ({"inject": 0}, "inject must be positive"),
    ({"max_inject_sigma": 0.5}, "max_inject_sigma must be at least 1 pixel"),
    ({"contrast_threshold": 0}, r"contrast_threshold must be in \(0, 1\)"),
    ({"edge_threshold": 1}, "edge_threshold must be greater than 1"),
])
def test_keypoint_attack_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KeypointAttack(**kwargs)


@pytest.mark.parametrize("images", [torch.zeros(3, 32, 32), torch.zeros(1, 1, 32, 32), torch.full((1, 3, 32, 32), 1.5),
                                    torch.zeros(1, 3, 32, 32, dtype=torch.uint8)])
def test_image_attacks_reject_bad_images(images):
    for attack in (KeypointAttack(), GaussianNoise(std=0.01)):
        with pytest.raises(ValueError, match="expected"):
            attack(images)


# ------------------------------------------------------------------------------ Gaussian noise


def test_noise_with_std_is_seeded_on_the_grid(scene):
    x = to_tensor(scene)
    attack = GaussianNoise(std=4 / 255, seed=3)
    out = attack(x)
    assert torch.equal(attack(x), out) and not torch.equal(GaussianNoise(std=4 / 255, seed=4)(x), out)
    assert on_grid(out) and out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    change = (out - x) * 255
    assert 3 < float(change.std()) < 5 and attack.stats.std == [4 / 255]
    assert attack.stats.ssim[0] == pytest.approx(ssim(scene, to_uint8(out)))


def test_noise_matches_the_target_ssim_on_a_real_photo(ukbench_dir):
    rgb = read_photo(ukbench_dir / "ukbench00000.jpg").rgb
    attack = GaussianNoise(target_ssim=0.95, seed=0)
    out = to_uint8(attack(to_tensor(rgb)))
    assert abs(ssim(rgb, out) - 0.95) <= attack.tolerance
    assert attack.stats.ssim[0] == pytest.approx(ssim(rgb, out)) and attack.stats.std[0] > 0
    assert np.array_equal(to_uint8(attack(to_tensor(rgb))), out)


def test_noise_keeps_a_black_and_white_photo_grey(ukbench_dir):
    grey = np.repeat(read_photo(ukbench_dir / "ukbench00000.jpg").rgb[..., :1], 3, axis=2)
    out = to_uint8(GaussianNoise(std=4 / 255, seed=0)(to_tensor(grey)))
    assert (out[..., :1] == out[..., 1:]).all() and not np.array_equal(out, grey)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give either std or target_ssim"),
    ({"std": 0.01, "target_ssim": 0.9}, "give either std or target_ssim"),
    ({"std": 0}, r"std must be in \(0, 1\]"),
    ({"std": 2}, r"std must be in \(0, 1\]"),
    ({"target_ssim": 1}, r"target_ssim must be in \(0, 1\)"),
    ({"target_ssim": 0}, r"target_ssim must be in \(0, 1\)"),
    ({"target_ssim": 0.9, "tolerance": 0}, r"tolerance must be in \(0, 1\)"),
    ({"target_ssim": 0.9, "max_iterations": 0}, "max_iterations must be a positive integer"),
])
def test_noise_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianNoise(**kwargs)
