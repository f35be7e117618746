"""PIRE and the shared attack loop on a real UKBench photo at a tiny working size."""
import math
import re
from functools import partial

import pytest
import torch

from advquery import PIRE, SSIMPIRE, load_model
from advquery.extraction import describe
from advquery.io import read_photo, to_tensor, to_uint8
from advquery.quality import ssim
from advquery.transforms import jpeg_round_trip, resample, straight_through

from advquery.attacks import CVPIRE, MaskedPIRE, SDPIRE, RandomEdits
from advquery.models import ModelEnsemble
from advquery.perceptual import color_variance_map, ssim_masking_map, std_map
from helpers import levels, lite0_for_counting, on_grid

SIZE = 96
EPS = 2 / 255
LEVEL = 1 / 255


@pytest.fixture(scope="module")
def model():
    return lite0_for_counting()


@pytest.fixture(scope="module")
def photo(ukbench_dir):
    """(1, 3, 480, 640) float32 on the 8-bit grid."""
    return to_tensor(read_photo(ukbench_dir / "ukbench00000.jpg").rgb)


@pytest.fixture(scope="module")
def attacked(model, photo):
    """The default (quantised) attack at 2 grey levels, 5 steps, seed 0; its output and stats."""
    before = photo.clone()
    attack = PIRE(model, eps=EPS, steps=5, size=SIZE, seed=0)
    x_adv = attack(photo)
    assert torch.equal(photo, before), "the attack modified its input tensor"
    return x_adv, attack.stats


def _cosine(model, a: torch.Tensor, b: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((describe(model, a, SIZE) * describe(model, b, SIZE)).sum())


# ------------------------------------------------------------------------------ argument checks


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 0}, r"eps must be in \(0, 1\]"),
    ({"eps": -2 / 255}, r"eps must be in \(0, 1\]"),
    ({"eps": 1.5}, r"eps must be in \(0, 1\]"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": 2.5}, "steps must be a positive integer"),
    ({"lr": 0}, "lr must be positive"),
    ({"lr": -1e-3}, "lr must be positive"),
    ({"saving": "bogus"}, r"saving must be one of \('quantised', 'refined', 'x10'\), got 'bogus'"),
    ({"target_similarity": 2}, r"target_similarity must be in \[-1, 1\], got 2"),
    ({"edits": 2}, "edits must be RandomEdits or None, got 2"),
    ({"steps": True}, "steps must be a positive integer"),
    ({"patience": 0}, "patience must be a positive integer, got 0"),
    ({"coarseness": 0}, "coarseness must be a positive integer, got 0"),
    ({"coarseness": 1.5}, "coarseness must be a positive integer, got 1.5"),
    ({"ssim_weight": -1}, "ssim_weight must be >= 0, got -1"),
    ({"lr_schedule": "linear"}, r"lr_schedule must be one of \('constant', 'cosine'\), got 'linear'"),
    ({"coarse_layer": 1}, "coarse_layer must be an integer >= 2 or None, got 1"),
    ({"coarse_layer": 2.0}, "coarse_layer must be an integer >= 2 or None, got 2.0"),
    ({"grey_change": 1}, "grey_change must be a bool, got 1"),
    ({"gradient_blur": -1}, r"gradient_blur must be a blur sigma in \[0, 8\] grid cells, got -1"),
    ({"gradient_blur": 9}, r"gradient_blur must be a blur sigma in \[0, 8\] grid cells, got 9"),
    ({"gradient_blur": "2"}, r"gradient_blur must be a blur sigma in \[0, 8\] grid cells, got '2'"),
])
def test_pire_rejects_bad_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PIRE(model, **{"eps": EPS, "steps": 2, "size": SIZE, **kwargs})


def test_cosine_schedule_shrinks_the_last_steps(model, photo):
    """Each step moves the image by at most the step size: under ``cosine`` the last move is about half of the
    first (4 steps: 1, 0.85, 0.5 of ``lr``), under ``constant`` it stays about ``lr``."""
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    x = (x * 255).round() / 255
    moves = {}
    for schedule in ("constant", "cosine"):
        inputs = []
        hook = model.features.register_forward_pre_hook(
            lambda _, args: inputs.append(args[0].detach().clone()) if torch.is_grad_enabled() else None)
        try:
            PIRE(model, eps=40 / 255, lr=8 / 255, steps=4, size=SIZE, seed=0, lr_schedule=schedule)(x)
        finally:
            hook.remove()
        moves[schedule] = [float((b - a).abs().max()) for a, b in zip(inputs, inputs[1:])]
    assert moves["constant"][0] == pytest.approx(moves["cosine"][0])  # the same first step
    assert moves["cosine"][-1] < 0.7 * moves["constant"][-1]
    assert moves["constant"][-1] > 0.8 * moves["constant"][0]


@pytest.mark.parametrize("images, message", [
    (torch.zeros(1, 4, 32, 32), re.escape("expected (N, 3, H, W) float images in [0, 1], got (1, 4, 32, 32)")),
    (torch.zeros(3, 32, 32), re.escape("expected (N, 3, H, W) float images in [0, 1], got (3, 32, 32)")),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), re.escape("expected (N, 3, H, W)") + ".*uint8"),
    (torch.full((1, 3, 32, 32), 255.0), re.escape("expected images in [0, 1], got values in [255, 255]")),
    (torch.full((1, 3, 32, 32), -0.5), re.escape("expected images in [0, 1], got values in [-0.5, -0.5]")),
])
def test_pire_rejects_bad_images(model, images, message):
    with pytest.raises(ValueError, match=message):
        PIRE(model, eps=EPS, steps=2, size=SIZE)(images)


# ------------------------------------------------------------------------------ invariants on a real photo


def test_output_keeps_full_resolution_and_grid(photo, attacked):
    x_adv, _ = attacked
    assert photo.shape == (1, 3, 480, 640)
    assert x_adv.shape == photo.shape and x_adv.dtype == photo.dtype  # working size 96, photo size kept
    assert on_grid(x_adv)
    assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1


def test_output_within_linf_budget(photo, attacked):
    x_adv, _ = attacked
    assert float((x_adv - photo).abs().max()) <= EPS + 1e-6
    assert (levels(x_adv, photo) > 0.5).float().mean() > 0.5  # most pixels really changed


def test_descriptor_moved_and_stats_agree(model, photo, attacked):
    x_adv, stats = attacked
    assert len(stats.similarity) == 1 and len(stats.steps) == 1
    cosine = _cosine(model, photo, x_adv)  # independent of the attack's own bookkeeping
    assert cosine < 0.99
    assert stats.similarity[0] == pytest.approx(cosine, abs=1e-4)
    assert stats.steps == [5]  # no early-stopping rule set: all steps run


def test_x10_saving_scales_the_perturbation(model, photo, attacked):
    x_adv = PIRE(model, eps=EPS, steps=5, size=SIZE, seed=0, saving="x10")(photo)
    change = levels(x_adv, photo)
    assert on_grid(x_adv)
    assert float(change.max()) <= 10 * 2 + 0.5 + 1e-3  # 10 x eps, plus rounding to the grid
    assert float(change.max()) > float(levels(attacked[0], photo).max()) + 5  # much larger than quantised


def test_refined_saving_keeps_sub_level_perturbations(model, photo):
    """Below half a grey level, rounding erases the quantised attack entirely; refined lifts it to 1 level."""
    interior = (photo * 255 >= 1) & (photo * 255 <= 254)  # pixels that can move both ways
    tiny = 0.4 / 255
    erased = PIRE(model, eps=tiny, steps=2, size=SIZE, seed=0)(photo)
    assert torch.equal(erased, photo)
    refined = PIRE(model, eps=tiny, steps=2, size=SIZE, seed=0, saving="refined")(photo)
    change = levels(refined, photo)
    assert on_grid(refined)
    assert float(change.max()) == pytest.approx(1, abs=1e-3)
    assert (change[interior] > 0.5).float().mean() > 0.99


def test_refined_saving_every_change_at_least_one_level(model, photo):
    eps = 1.5 / 255
    x_adv = PIRE(model, eps=eps, steps=3, size=SIZE, seed=0, saving="refined")(photo)
    change = levels(x_adv, photo)
    changed = change[change > 1e-3]
    assert changed.numel() > 0.9 * change.numel()
    assert float(changed.min()) >= 1 - 1e-3
    assert float(change.max()) <= math.ceil(eps * 255) + 1e-3


def test_same_seed_same_output_other_seed_differs(model, photo, attacked):
    again = PIRE(model, eps=EPS, steps=5, size=SIZE, seed=0)(photo)
    assert torch.equal(again, attacked[0])
    other = PIRE(model, eps=EPS, steps=5, size=SIZE, seed=1)(photo)
    assert not torch.equal(other, attacked[0])


def test_render_reproduces_the_output_from_the_kept_perturbation(model, photo):
    attack = PIRE(model, eps=EPS, steps=2, size=SIZE, seed=0)
    x_adv = attack(photo)
    v = attack.perturbation
    assert v.shape == (1, 3, 72, 96)  # working resolution, long side 96
    assert float(v.abs().max()) <= EPS + 1e-6
    assert torch.equal(attack.render(photo, v), x_adv)
    x10 = attack.render(photo, v, "x10")
    assert on_grid(x10) and float(levels(x10, photo).max()) > float(levels(x_adv, photo).max())
    with pytest.raises(ValueError, match="saving must be one of"):
        attack.render(photo, v, "bogus")


def test_snapshots_are_the_results_of_shorter_runs(model, photo):
    attack = PIRE(model, eps=EPS, steps=4, size=SIZE, seed=0, snapshot_every=2)
    attack(photo)
    assert [k for k, _ in attack.snapshots] == [2, 4]
    assert torch.equal(attack.snapshots[-1][1], attack.perturbation)
    short = PIRE(model, eps=EPS, steps=2, size=SIZE, seed=0)
    assert torch.equal(attack.render(photo, attack.snapshots[0][1]), short(photo))
    assert short.snapshots == []  # off by default


# ------------------------------------------------------------------------------ early stopping, batches, codec


def test_target_similarity_stops_early(model, photo):
    attack = PIRE(model, eps=EPS, steps=5, size=SIZE, seed=0, target_similarity=0.999)
    attack(photo)
    assert attack.stats.steps[0] < 5
    assert attack.stats.similarity[0] <= 0.999 + 1e-4  # stopped because the target was reached


def test_patience_stops_when_loss_cannot_improve(model, photo):
    """eps below half a grey level: every quantised candidate is the original, the loss is constant,
    so only step 0 counts as an improvement and patience 2 stops the loop at step 2."""
    attack = PIRE(model, eps=0.4 / 255, steps=6, size=SIZE, seed=0, patience=2)
    x_adv = attack(photo)
    assert attack.stats.steps == [2]
    assert torch.equal(x_adv, photo)
    assert attack.stats.similarity[0] == pytest.approx(1, abs=1e-5)


def test_batch_gives_per_image_stats(model, photo, ukbench_dir):
    second = to_tensor(read_photo(ukbench_dir / "ukbench00004.jpg").rgb)
    batch = torch.cat([photo, second])
    attack = PIRE(model, eps=EPS, steps=3, size=SIZE, seed=0)
    x_adv = attack(batch)
    assert x_adv.shape == batch.shape
    assert len(attack.stats.steps) == 2 and len(attack.stats.similarity) == 2
    assert float((x_adv - batch).abs().max()) <= EPS + 1e-6
    for i in range(2):
        assert attack.stats.similarity[i] == pytest.approx(_cosine(model, batch[i:i + 1], x_adv[i:i + 1]), abs=1e-4)


def test_jpeg_codec_in_the_loop(model, photo):
    attack = PIRE(model, eps=EPS, steps=3, size=SIZE, seed=0, codec=partial(jpeg_round_trip, quality=90))
    x_adv = attack(photo)
    assert x_adv.shape == photo.shape and on_grid(x_adv)
    assert float((x_adv - photo).abs().max()) <= EPS + 1e-6
    assert attack.stats.steps == [3] and attack.stats.similarity[0] < 1


def test_black_and_white_photo_stays_grey_in_a_batch_with_a_colour_one(model, photo):
    grey = torch.round(photo.mean(dim=1, keepdim=True).expand_as(photo) * 255) / 255
    attack = PIRE(model, eps=EPS, steps=3, size=SIZE, seed=0, coarse_layer=4)
    out = attack(torch.cat([grey, photo]))
    assert torch.equal(out[0, :1].expand(3, -1, -1), out[0])  # no colour drawn into the grey photo
    assert not torch.equal(out[1, :1].expand(3, -1, -1), out[1])  # the colour photo's channels change apart
    assert float((out[0] - grey[0]).abs().max()) <= EPS + 1e-6
    assert attack.stats.similarity[0] < 0.99 and _cosine(model, grey, out[:1]) < 0.99


def test_grey_change_changes_a_colour_photo_in_grey(model, photo):
    attack = PIRE(model, eps=EPS, steps=3, size=SIZE, seed=0, grey_change=True)
    out = attack(photo)
    change = out[0] - photo[0]
    inside = ((photo[0] >= EPS) & (photo[0] <= 1 - EPS)).all(dim=0)  # no channel clamped at 0 or 1
    assert bool(inside.float().mean() > 0.5) and bool(change.abs().amax(dim=0)[inside].max() > 0)
    # One change for the three channels, rounded to each channel's 8-bit grid: a change of exactly half a level
    # rounds to the even level, so it may split by one level between channels of different parity.
    spread = ((change.amax(dim=0) - change.amin(dim=0)) * 255).round()[inside]
    assert float(spread.max()) <= 1 and float((spread > 0).float().mean()) < 0.01
    assert attack.stats.similarity[0] < 0.99 and _cosine(model, photo, out) < 0.99


def test_coarse_perturbation_is_smoother_within_budget(model, photo):
    # float32: the property is the grid's, and bfloat16 passes (which "auto" picks on some CPUs) move a 3-step
    # perturbation's roughness by a few percent from one CPU to another
    fine = PIRE(model, eps=EPS, steps=3, size=SIZE, seed=0, precision="float32")
    coarse = PIRE(model, eps=EPS, steps=3, size=SIZE, seed=0, coarseness=2, precision="float32")
    outputs = [attack(photo) for attack in (fine, coarse)]
    assert fine.perturbation.shape[-2:] == (72, 96) and coarse.perturbation.shape[-2:] == (36, 48)
    for x_adv in outputs:
        assert x_adv.shape == photo.shape and on_grid(x_adv)
        assert float((x_adv - photo).abs().max()) <= EPS + 1e-6

    def roughness(v):  # mean change between horizontal neighbours, relative to the mean magnitude
        return float((v[..., 1:] - v[..., :-1]).abs().mean() / v.abs().mean())

    # compare both at the working resolution
    assert roughness(resample(coarse.perturbation, (72, 96))) < 0.7 * roughness(fine.perturbation)
    assert coarse.stats.similarity[0] < 1


def test_coarse_layer_adds_low_frequencies_within_budget(model, photo):
    """The second, 4x coarser component puts more of the change into what survives a 4x downscale, and the
    sum keeps the bound and the 8-bit grid."""
    eps = 16 / 255  # a bound the steps (4 levels each) do not fill at once, so the layers' moves show
    options = dict(eps=eps, lr=4 / 255, steps=6, size=SIZE, seed=0, precision="float32")
    plain, layered = PIRE(model, **options), PIRE(model, coarse_layer=4, **options)
    outputs = [attack(photo) for attack in (plain, layered)]
    for x_adv in outputs:
        assert x_adv.shape == photo.shape and on_grid(x_adv)
        assert float((x_adv - photo).abs().max()) <= eps + 1e-6
    assert layered.perturbation.shape == plain.perturbation.shape  # the sum, at the working resolution

    def low_share(v):  # energy of the 4x block means relative to the whole change's
        return float(torch.nn.functional.avg_pool2d(v, 4).pow(2).mean() / v.pow(2).mean())

    assert low_share(layered.perturbation) > 1.5 * low_share(plain.perturbation)
    assert layered.stats.similarity[0] < 1


def test_gradient_blur_moves_smooth_blobs_within_budget(model, photo):
    """A blurred gradient makes the steps' moves away from the random start smoother than the plain gradient's,
    within the bound and on the 8-bit grid."""
    eps = 16 / 255  # a bound the steps do not reach from most of the start, so the moves' shape shows
    options = dict(eps=eps, lr=1 / 255, size=SIZE, seed=0, precision="float32")
    start = PIRE(model, steps=1, **options)  # one step returns the perturbation it was evaluated at: the start
    start(photo)
    plain, blurred = PIRE(model, steps=4, **options), PIRE(model, steps=4, gradient_blur=2.0, **options)
    for attack in (plain, blurred):
        x_adv = attack(photo)
        assert on_grid(x_adv) and float((x_adv - photo).abs().max()) <= eps + 1e-6
        assert attack.stats.similarity[0] < 1

    def roughness(v):  # mean change between horizontal neighbours, relative to the mean magnitude
        return float((v[..., 1:] - v[..., :-1]).abs().mean() / v.abs().mean())

    moves = [attack.perturbation - start.perturbation for attack in (plain, blurred)]
    assert all(float(m.abs().max()) > 0 for m in moves)
    assert roughness(moves[1]) < 0.6 * roughness(moves[0])


def test_ssim_weight_buys_image_quality_with_part_of_the_budget(model, photo):
    """The SSIM term leaves pixels unchanged where a change would cost more SSIM than it moves the descriptor."""
    rgb = to_uint8(photo[0])
    outputs = {}
    for weight in (0, 300):
        attack = PIRE(model, eps=4 / 255, steps=6, size=SIZE, seed=0, ssim_weight=weight)
        x_adv = attack(photo)
        assert on_grid(x_adv) and float((x_adv - photo).abs().max()) <= 4 / 255 + 1e-6
        outputs[weight] = (ssim(rgb, to_uint8(x_adv[0])), float((x_adv != photo).float().mean()),
                           attack.stats.similarity[0])
    (plain_ssim, plain_changed, _), (kept_ssim, kept_changed, kept_similarity) = outputs[0], outputs[300]
    assert 1 - kept_ssim < 0.7 * (1 - plain_ssim) and kept_changed < plain_changed
    assert kept_similarity < 0.99  # the descriptor still moved


def test_ssim_cost_is_of_the_perturbation_before_the_codec(model, photo):
    """The codec's own loss is not the attack's to price: the SSIM term sees the 8-bit pixels before the codec."""
    attack = SSIMPIRE(model, steps=2, size=SIZE, seed=0, codec=partial(jpeg_round_trip, quality=50))
    v = torch.full((1, 3, 72, 96), 1 / 255)
    composed = attack._compose(photo, v)
    torch.testing.assert_close(composed.pixels, (photo + 1 / 255).clamp(0, 1).mul(255).round().div(255))
    torch.testing.assert_close(composed.seen, jpeg_round_trip(composed.pixels, 50))


@pytest.mark.parametrize("saving,codec,gain", [("quantised", True, True), ("quantised", False, False),
                                               ("quantised", True, False), ("refined", False, True)])
def test_composition_is_autograds_graph_to_the_bit(model, saving, codec, gain):
    """The composition's pixels, what the views see and its backward pass to the perturbation are those of
    autograd's graph of the clamp, the straight-through rounding and codec and the gain, bit for bit; pixels
    pushed past 0 and 1 (where the clamp stops the gradient) included."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (2, 3, 40, 52), generator=g).float() / 255
    x[..., :8, :] = 0
    x[..., -8:, :] = 1
    v = ((torch.rand(2, 3, 20, 26, generator=g) * 2 - 1) * 6 / 255).requires_grad_()
    factor = torch.rand(2, 1, 40, 52, generator=g) if gain else None
    upstream_seen, upstream_pixels = torch.randn(2, 2, 3, 40, 52, generator=g)
    jpeg = partial(jpeg_round_trip, quality=80)
    attack = PIRE(model, eps=6 / 255, steps=1, size=SIZE, saving=saving, codec=jpeg if codec else None)

    change = resample(v, (40, 52))
    change = change if factor is None else change * factor
    if saving == "quantised":
        pixels = (x + straight_through(change, lambda d: torch.round(d * 255) / 255)).clamp(0, 1)
        seen = straight_through(pixels, jpeg) if codec else pixels
    else:
        pixels = seen = (x + change).clamp(0, 1)
    ((seen * upstream_seen).sum() + (pixels * upstream_pixels).sum()).backward()
    expected, v.grad = v.grad, None

    composed = attack._compose(x, v, factor)
    assert torch.equal(composed.pixels, pixels.detach()) and torch.equal(composed.seen, seen.detach())
    assert bool(composed.outside.any())
    composed.backward(upstream_seen.clone().add_(upstream_pixels))
    assert torch.equal(v.grad, expected)


def test_ssim_pire_is_pire_with_a_positive_ssim_price(model):
    attack = SSIMPIRE(model, steps=2, size=SIZE, seed=0)
    assert attack.eps == pytest.approx(3 / 255) and attack.ssim_weight == 300 and attack.random_start
    with pytest.raises(ValueError, match=r"ssim_weight must be positive \(0 is PIRE\), got 0"):
        SSIMPIRE(model, ssim_weight=0)


def test_dtype_follows_the_input(model):
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0)).mul(255).round().div(255).double()
    x_adv = PIRE(model, eps=EPS, steps=2, size=64, seed=0)(x)
    assert x_adv.dtype == torch.float64 and x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6


def test_random_edits_check_their_parameters():
    for kwargs, message in [({"copies": 0}, "copies must be a positive integer"),
                            ({"crop": (0.5, 1.2)}, r"crop must be a range 0 < low <= high <= 1"),
                            ({"resize": (0.0, 1.0)}, r"resize must be a range"),
                            ({"jpeg": (90, 50)}, r"jpeg must be a quality range")]:
        with pytest.raises(ValueError, match=message):
            RandomEdits(**kwargs)


def test_random_edits_draw_valid_copies_with_gradients(photo):
    edits = RandomEdits(copies=3, crop=(0.5, 0.9), resize=(0.5, 0.8), jpeg=(70, 90))
    x = photo.clone().requires_grad_(True)
    copies = edits.sample(x, torch.Generator().manual_seed(0))
    assert len(copies) == 3
    for y, (left, top, right, bottom) in copies:
        h, w = y.shape[-2:]
        assert 0.5 * 480 - 1 <= h <= 0.8 * 480 + 1 and 0.5 * 640 - 1 <= w <= 0.8 * 640 + 1  # downscaled
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        assert 0.5 * w - 1 <= right - left <= 0.9 * w + 1 and 0.5 * h - 1 <= bottom - top <= 0.9 * h + 1
    sum(y.sum() for y, _ in copies).backward()
    assert x.grad is not None and float(x.grad.abs().min()) > 0  # the straight-through JPEG passes gradients


def test_edits_protect_a_cropped_copy_better(model, photo):
    """Random crops in the objective: a bounding-box crop of the protected photo stays further from the original."""
    box = (160, 120, 480, 360)  # the central half of each side, described at the photo's scale

    def crop_similarity(**kwargs) -> float:
        x_adv = PIRE(model, eps=4 / 255, steps=10, size=SIZE, seed=0, **kwargs)(photo)
        assert on_grid(x_adv) and levels(x_adv, photo).max() <= 4 + 1e-4
        with torch.inference_mode():
            return float((describe(model, photo, SIZE, box=box) * describe(model, x_adv, SIZE, box=box)).sum())

    assert crop_similarity(edits=RandomEdits(copies=2, jpeg=None, resize=(1, 1))) < crop_similarity()


def _half_flat(h: int = 48, w: int = 96) -> torch.Tensor:
    """Left half flat grey, right half random texture, on the 8-bit grid."""
    x = torch.full((1, 3, h, w), 128 / 255)
    x[..., w // 2:] = torch.randint(0, 256, (1, 3, h, w - w // 2), generator=torch.Generator().manual_seed(0)) / 255
    return x


@pytest.mark.parametrize("attack_cls, budget", [
    (CVPIRE, lambda x: color_variance_map(x, n=5)),
    (SDPIRE, lambda x: std_map(x, n=3)),
])
def test_map_budget_spares_flat_regions_and_respects_the_map(model, attack_cls, budget):
    x = _half_flat()
    m = 20
    attack = attack_cls(model, m=m, steps=3, size=96, seed=0)  # photo at working size: the bound is exact
    x_adv = attack(x)
    change = levels(x_adv, x)
    assert change[..., :40].max() == 0, "flat region changed although its budget is zero"
    assert change[..., 50:].max() >= 1, "textured region not perturbed"
    assert bool((change <= budget(x) * m + 0.5 + 1e-3).all())


def test_map_attacks_check_their_parameters(model):
    with pytest.raises(ValueError, match="threshold multiplier m"):
        CVPIRE(model, m=0)
    with pytest.raises(ValueError, match="n \\(window side\\) must be an odd integer"):
        SDPIRE(model, n=4)
    with pytest.raises(ValueError, match="metric must be one of"):
        CVPIRE(model, metric="cie76")


def test_masked_pire_spends_more_in_texture_at_the_same_flat_budget(model):
    x = _half_flat()
    attack = MaskedPIRE(model, eps=EPS, max_gain=4, steps=3, size=96, seed=0)
    x_adv = attack(x)
    change = levels(x_adv, x)
    assert on_grid(x_adv)
    assert change[..., :40].max() <= 2 + 1e-4, "flat region exceeded eps"
    assert change[..., 50:].max() > 2, "textured region got no more than eps"
    assert change.max() <= 8 + 1e-4  # max_gain * eps
    torch.testing.assert_close(attack.bound(x), ssim_masking_map(x, 4) * EPS)


def test_masked_pire_checks_its_parameters(model):
    with pytest.raises(ValueError, match="eps must be in"):
        MaskedPIRE(model, eps=0)
    with pytest.raises(ValueError, match="max_gain must be >= 1"):
        MaskedPIRE(model, max_gain=0.5)


def test_ensemble_attack_moves_every_member(model):
    """An attack on two models at once lowers the similarity under each of them."""
    other = load_model("efficientnet-lite1-gem", device="cpu")
    ensemble = ModelEnsemble([model, other])
    x = _half_flat(96, 128)
    with torch.inference_mode():
        d = ensemble(x)
        assert torch.allclose(d.norm(dim=1), torch.ones(1))
    x_adv = PIRE(ensemble, eps=4 / 255, steps=3, size=96, seed=0)(x)
    for member in (model, other):
        assert _cosine(member, x, x_adv) < 0.99
    with pytest.raises(ValueError, match="at least two models"):
        ModelEnsemble([model])


def test_on_step_reports_every_step_and_can_end_the_call(model, photo):
    calls = []
    PIRE(model, eps=EPS, steps=3, size=SIZE, seed=0, on_step=lambda done, limit: calls.append((done, limit)))(photo)
    assert calls == [(1, 3), (2, 3), (3, 3)]

    def stop(done, limit):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        PIRE(model, eps=EPS, steps=3, size=SIZE, seed=0, on_step=stop)(photo)
