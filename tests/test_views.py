"""Tracker views drawn in the attack loop, the flat-region gain and the grid the steps use, with the real model."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from advquery import PIRE, load_model
from advquery.attacks.views import TrackerViews, View
from advquery.extraction import describe
from advquery.io import read_photo, to_tensor
from advquery.models import ModelEnsemble
from advquery.perceptual import flat_gain
from advquery.transforms import (SAMPLING_BANDS, Transform, gaussian_blur, jpeg_round_trip, jpeg_surrogate, quantise,
                                 rotate, webp_round_trip)
from helpers import lite0_for_counting

SIZE = 96


@pytest.fixture(scope="module")
def model():
    return lite0_for_counting()


@pytest.fixture(scope="module")
def photo(ukbench_dir):
    return to_tensor(read_photo(ukbench_dir / "ukbench00000.jpg").rgb)


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "count must be a positive integer"),
    ({"sizes": (16, 64)}, "sizes must be a range 32 <= low <= high"),
    ({"crop": (0.5, 1.2)}, "crop must be a range 0 < low <= high <= 1"),
    ({"flip": 2}, "flip must be a probability"),
    ({"rotate": 90}, "rotate must be in"),
    ({"jpeg": (0, 90)}, "jpeg must be a quality range"),
    ({"shrink": (8, 64)}, "shrink must be a range 16 <= low <= high"),
    ({"shrink": (64, 32)}, "shrink must be a range"),
    ({"shrink_probability": -0.1}, "shrink_probability must be a probability"),
    ({"whole": 1.5}, "whole must be a probability"),
    ({"codec_blur": -1}, "codec_blur must be a blur sigma"),
    ({"codec_blur": 1, "jpeg_gradient": True}, "codec_blur and jpeg_gradient are two gradients"),
    ({"extra": {"count": 1}}, "extra must be TrackerViews or None"),
])
def test_tracker_views_check_their_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrackerViews(**kwargs)


def test_views_are_drawn_reproducibly_within_their_ranges():
    views = TrackerViews(count=200, sizes=(64, 128), crop=(0.4, 0.9), rotate=5)
    drawn = views.sample(torch.Generator().manual_seed(3), models=3)
    assert drawn == views.sample(torch.Generator().manual_seed(3), models=3)
    assert len(drawn) == 200 and {v.model for v in drawn} == {0, 1, 2}
    assert all(64 <= v.size <= 128 and abs(v.angle) <= 5 and 0.4 <= v.box[2] <= 0.9 for v in drawn)
    assert 50 < sum(v.flip for v in drawn) < 150
    assert any(v.recompression for v in drawn) and not all(v.recompression for v in drawn)


def test_a_view_of_the_part_it_reaches_is_the_view_of_the_photo_with_its_gradient():
    """A view computed from the rows and columns it reaches alone (as the attack computes it, so that its gradient
    has their size) is the view of the whole photo, bit for bit, and so is its gradient, embedded at that place:
    flips, rotations downscaled or not, selections, cropped files, shrunk copies, colour and re-compression; and a
    part of another size is refused."""
    g = torch.Generator().manual_seed(21)
    x = torch.rand(1, 3, 150, 200, generator=g)
    family = TrackerViews(count=40, sizes=(64, 256), crop=(0.3, 1.0), shrink=(32, 96), shrink_probability=0.3,
                          whole=0.3, jpeg_probability=0.3)
    views = family.sample(torch.Generator().manual_seed(4))
    assert {v.flip for v in views} == {True, False} and any(v.angle for v in views)
    reached_less = 0
    for view in views:
        top, bottom, left, right = view.reach((150, 200))
        whole_leaf, part_leaf = x.clone().requires_grad_(), x[..., top:bottom, left:right].clone().requires_grad_()
        expected, got = view(whole_leaf), view(part_leaf, photo=(150, 200))
        assert torch.equal(got, expected)
        upstream = torch.randn(expected.shape, generator=g)
        (expected * upstream).sum().backward()
        (got * upstream).sum().backward()
        embedded = torch.zeros_like(x)
        embedded[..., top:bottom, left:right] = part_leaf.grad
        assert torch.equal(embedded, whole_leaf.grad)
        reached_less += (bottom - top) * (right - left) < 150 * 200
    assert reached_less > len(views) // 2
    with pytest.raises(ValueError, match="the view reads"):
        views[0](x, photo=(151, 200))
    with pytest.raises(ValueError, match="a part of"):
        rotate(x, 3.0, (10, 10, 80, 100), (40, 50), photo=(300, 400))


def test_shrunk_copies_are_drawn_only_when_asked_and_draw_nothing_otherwise():
    generator = torch.Generator().manual_seed(5)
    plain = TrackerViews(count=50).sample(generator)
    assert all(v.shrunk is None for v in plain)
    replay = torch.Generator().manual_seed(5)
    torch.rand(50 * 13, generator=replay)  # 13 draws a view: the stream of views drawn before shrinking existed
    assert torch.equal(generator.get_state(), replay.get_state())
    drawn = TrackerViews(count=200, shrink=(32, 64), shrink_probability=0.5).sample(torch.Generator().manual_seed(5))
    shrunk = [v.shrunk for v in drawn if v.shrunk is not None]
    assert 50 < len(shrunk) < 150 and all(32 <= s <= 64 for s in shrunk)


def test_a_whole_share_of_the_views_keeps_the_whole_photo_and_draws_nothing_without_it():
    crops = TrackerViews(count=300).sample(torch.Generator().manual_seed(4))
    assert crops == TrackerViews(count=300, whole=0.0).sample(torch.Generator().manual_seed(4))
    assert sum(v.box[2:] == (1.0, 1.0) for v in crops) == 0
    drawn = TrackerViews(count=300, whole=0.5).sample(torch.Generator().manual_seed(4))
    whole = [v for v in drawn if v.box == (0.0, 0.0, 1.0, 1.0)]
    assert 100 < len(whole) < 200
    assert all(0.3 <= v.box[2] <= 1 and v.box[2:] != (1.0, 1.0) for v in drawn if v not in whole)


def test_an_extra_family_is_drawn_after_the_views_and_leaves_the_definition_without_it_as_it_was():
    views = TrackerViews(count=4, sizes=(64, 128))
    thumbs = TrackerViews(count=2, sizes=(32, 48), shrink=(16, 24), shrink_probability=1.0)
    both = dataclasses.replace(views, extra=thumbs)
    drawn = both.sample(torch.Generator().manual_seed(7), models=2)
    assert both.per_step == views.per_step + 2 == 6 and len(drawn) == 6
    # their passes weighed by pixels: the mean squared working size, 32-48 px against 64-128 px
    assert views.pass_cost == 4 and both.pass_cost == pytest.approx(4 + 2 * (32 * 32 + 32 * 48 + 48 * 48)
                                                                    / (64 * 64 + 64 * 128 + 128 * 128))
    assert drawn[:4] == views.sample(torch.Generator().manual_seed(7), models=2)
    assert all(32 <= v.size <= 48 and 16 <= v.shrunk <= 24 for v in drawn[4:])
    # the definition (which names cached results) reads as it did before the field existed where there is none
    assert repr(TrackerViews()) == (
        "TrackerViews(count=2, sizes=(448, 1024), crop=(0.3, 1.0), crop_file=0.5, flip=0.5, rotate=3.0, colour=0.15, "
        "jpeg=(70, 95), jpeg_probability=0.3, shrink=None, shrink_probability=0.3, webp_share=0.0, whole=0.0, "
        "codec_blur=0.0)")
    assert "extra=TrackerViews(count=2" in repr(both) and eval(repr(both)) == both


def test_a_shrunk_view_is_the_small_copy_enlarged_to_the_working_size():
    x = torch.rand(1, 3, 60, 80, generator=torch.Generator().manual_seed(6))
    whole = View(False, 0.0, (0, 0, 1, 1), True, 80, (1, 1, 1), None, 0, shrunk=20)
    small = F.interpolate(x, size=(15, 20), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(whole(x), F.interpolate(small, size=(60, 80), mode="bilinear", align_corners=False))
    # a selection passes through the same copy of the whole photo: a 20 px photo keeps a 10 x 10 px box of it
    box = View(False, 0.0, (0.5, 0.5, 0.5, 0.5), False, 160, (1, 1, 1), None, 0, shrunk=40)
    assert tuple(box(x).shape[-2:]) == (60, 80)
    expected = F.interpolate(F.interpolate(x[..., 15:45, 20:60], size=(15, 20), mode="bilinear", align_corners=False,
                                           antialias=True), size=(60, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(box(x), expected)
    # a copy no smaller than the working size changes nothing
    unchanged = View(False, 0.0, (0, 0, 1, 1), True, 40, (1, 1, 1), None, 0, shrunk=60)
    torch.testing.assert_close(unchanged(x), View(False, 0.0, (0, 0, 1, 1), True, 40, (1, 1, 1), None, 0)(x))


def test_a_view_crops_at_the_photo_scale_or_describes_the_cropped_file_whole():
    x = torch.rand(1, 3, 60, 80)
    selection = View(False, 0.0, (0.5, 0.5, 0.5, 0.5), False, 160, (1, 1, 1), None, 0)
    assert tuple(selection(x).shape[-2:]) == (60, 80)  # a 30 x 40 box at the scale that makes the photo 160 px
    cropped_file = View(False, 0.0, (0.5, 0.5, 0.5, 0.5), True, 160, (1, 1, 1), None, 0)
    assert tuple(cropped_file(x).shape[-2:]) == (120, 160)
    whole = View(True, 0.0, (0, 0, 1, 1), True, 80, (1, 1, 1), None, 0)
    torch.testing.assert_close(whole(x), x.flip(-1))


def _rotated_crop(x: torch.Tensor, angle: float, box: tuple[float, float, float, float]) -> torch.Tensor:
    """The crop a view keeps of the photo ``x`` rotated whole (the reference a view's sampling is checked against)."""
    whole = Transform("rotate", angle)(x)
    h, w = whole.shape[-2:]
    ch, cw = max(8, round(h * box[2])), max(8, round(w * box[3]))
    y0, x0 = round((h - ch) * box[0]), round((w - cw) * box[1])
    return whole[..., y0:y0 + ch, x0:x0 + cw]


def test_a_rotated_view_samples_only_its_crop_of_the_rotated_photo():
    """A view rotates only the part it keeps: the same pixels as rotating the whole photo, then cropping (and
    scaling up to the working size)."""
    x = torch.rand(1, 3, 61, 83, generator=torch.Generator().manual_seed(4))
    for angle, box in ((2.5, (0.2, 0.7, 0.5, 0.6)), (-3.0, (1.0, 0.0, 0.35, 0.9)), (1.0, (0, 0, 1, 1))):
        crop = _rotated_crop(x.flip(-1), angle, box)
        at_own_size = View(True, angle, box, True, max(crop.shape[-2:]), (1, 1, 1), None, 0)
        torch.testing.assert_close(at_own_size(x), crop, atol=1e-6, rtol=0)
        scaled_up = View(True, angle, box, True, 83, (1, 1, 1), None, 0)
        expected = F.interpolate(crop, size=tuple(scaled_up(x).shape[-2:]), mode="bilinear", align_corners=False)
        torch.testing.assert_close(scaled_up(x), expected, atol=1e-6, rtol=0)


def test_a_rotated_view_is_sampled_at_the_size_it_is_described_at():
    """A view described smaller than its crop rotates a downscaled copy of the part under the crop: about the
    pixels of rotating at the photo's size, then downscaling, from that part of the photo alone."""
    smooth = F.interpolate(torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(5)), size=(240, 320),
                           mode="bicubic", align_corners=False).clamp(0, 1).requires_grad_(True)
    for angle, box, size, shrunk in ((2.5, (0.2, 0.7, 0.5, 0.6), 120, None), (-3.0, (0, 0, 1, 1), 200, 60)):
        out = View(False, angle, box, False, size, (1, 1, 1), None, 0, shrunk=shrunk)(smooth)
        crop = _rotated_crop(smooth.detach(), angle, box)
        w = Transform("rotate", angle).shape((240, 320))[1]
        small = None if shrunk is None else (round(crop.shape[-2] * shrunk / w), round(crop.shape[-1] * shrunk / w))
        first = out.shape[-2:] if small is None else small
        expected = F.interpolate(F.interpolate(crop, size=first, mode="bilinear", antialias=True), size=out.shape[-2:],
                                 mode="bilinear")
        assert (out - expected).abs().max() < 4 / 255
    out = View(False, 2.0, (0, 0, 0.3, 0.3), False, 160, (1, 1, 1), None, 0)(smooth)  # the top left corner, halved
    out.sum().backward()
    used = smooth.grad.abs().sum(dim=(0, 1))
    assert used[:90, :120].sum() > 0 and used[100:].sum() == 0 and used[:, 130:].sum() == 0


def test_a_downscaled_rotation_keeps_the_geometry_and_filters_each_side():
    """Sampled smaller in one pass: a linear ramp comes out as the same ramp at the samples' positions (no offset),
    and noise is averaged along each side by as much as that side shrinks (no aliasing), one side at a time."""
    h, w, angle, window = 240, 320, 2.0, (10, 20, 150, 200)
    rows, cols = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    ramp = (0.2 + 0.6 * (0.3 * rows / h + 0.7 * cols / w)).expand(1, 3, h, w)
    out = rotate(ramp, angle, window, (50, 40))
    fine = rotate(ramp, angle, window)  # the same ramp sampled at the window's own size
    expected = F.interpolate(fine, size=(50, 40), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=2e-4, rtol=0)
    noise = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(7))
    for shape in ((30, 25), (150, 25), (30, 200)):  # both sides shrunk; only the width; only the height
        assert float(rotate(noise, angle, window, shape).std()) < 0.5 * float(noise.std())


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_a_single_photo_rotates_in_bands_with_the_same_pixels_and_gradient(threads, monkeypatch):
    """One photo is sampled as one band of output rows per thread (the CPU kernel shares work by image): the same
    pixels as one grid_sample call, the same gradient but for the order of summation, whatever the rows left over."""
    x = torch.rand(1, 3, 121, 93, generator=torch.Generator().manual_seed(6))
    upstream = torch.randn(rotate(x, 2.5, (5, 7, 101, 77), (67, 51)).shape, generator=torch.Generator().manual_seed(7))
    results, batches, sample = {}, [], F.grid_sample
    monkeypatch.setattr(F, "grid_sample", lambda image, grid, **options: batches.append(len(image)) or
                        sample(image, grid, **options))
    for count in (1, threads):
        monkeypatch.setattr(torch, "get_num_threads", lambda count=count: count)
        leaf = x.clone().requires_grad_(True)
        out = rotate(leaf, 2.5, (5, 7, 101, 77), (67, 51))  # 67 rows: bands of 34 + 33 or 23 + 23 + 21
        out.backward(upstream)
        results[count] = (out.detach(), leaf.grad)
    assert batches == [1, min(threads, SAMPLING_BANDS)]  # the photo alone, then one band per thread (at most 4)
    torch.testing.assert_close(results[threads][0], results[1][0], atol=0, rtol=0)
    torch.testing.assert_close(results[threads][1], results[1][1], atol=1e-6, rtol=0)
    assert results[1][1].abs().sum() > 1


def test_view_distance_is_zero_for_the_original_and_grows_with_a_change(model, photo):
    both = ModelEnsemble([model, load_model("efficientnet-lite1-gem", device="cpu")])
    attack = PIRE(both, eps=4 / 255, steps=2, size=SIZE, seed=0, poolings=("gem", "mac", "rmac"),
                  tracker_views=TrackerViews(count=3, sizes=(64, 96)))
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    targets = attack.whole_targets(x)
    zero = attack.view_distance(x, x, torch.Generator().manual_seed(0), targets)
    noisy = quantise(x + torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    moved = attack.view_distance(noisy, x, torch.Generator().manual_seed(0), targets)
    assert float(zero) == pytest.approx(0, abs=1e-6) and float(moved) > 1e-3


def test_view_distance_differentiated_view_by_view_gives_the_gradient_of_the_whole(model, photo):
    """One view's graph alive at a time: the same distance and gradient as one graph for all the views."""
    both = ModelEnsemble([model, load_model("efficientnet-lite1-gem", device="cpu")])
    attack = PIRE(both, eps=4 / 255, steps=2, size=SIZE, seed=0, poolings=("gem", "rmac", "map"), whole_view="cycle",
                  tracker_views=TrackerViews(count=3, sizes=(64, 96), jpeg_probability=0.5, whole=0.5))
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    targets = attack.whole_targets(x)
    noisy = quantise(x + torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    whole = noisy.clone().requires_grad_(True)
    distance = attack.view_distance(whole, x, torch.Generator().manual_seed(0), targets, step=1)
    expected, = torch.autograd.grad(distance.sum(), whole)
    by_view = noisy.clone().requires_grad_(True)
    spent = attack.view_distance(by_view, x, torch.Generator().manual_seed(0), targets, step=1, differentiate=True)
    assert not spent.requires_grad and float(expected.abs().sum()) > 0
    torch.testing.assert_close(spent, distance.detach())
    torch.testing.assert_close(by_view.grad, expected)


def test_whole_view_adds_one_differentiated_pass_per_step(model, photo):
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    passes = []
    hook = model.features.register_forward_pre_hook(lambda _, inputs: passes.append(torch.is_grad_enabled()))
    try:
        for whole in (True, False):
            passes.clear()
            PIRE(model, eps=3 / 255, steps=2, size=SIZE, seed=0, whole_view=whole, patience=None,
                 tracker_views=TrackerViews(count=2, sizes=(64, 96)))(x)
            assert sum(passes) == 2 * (2 + whole)  # steps x (views + the whole photo)
        passes.clear()
        PIRE(model, eps=3 / 255, steps=2, size=SIZE, seed=0, whole_view=False, patience=None,
             tracker_views=TrackerViews(count=2, sizes=(64, 96), extra=TrackerViews(count=1, sizes=(32, 48))))(x)
        assert sum(passes) == 2 * 3  # an extra family's view is one differentiated pass more a step
    finally:
        hook.remove()


def test_cycled_whole_view_gives_each_member_the_photo_in_turn(model, photo):
    """whole_view="cycle": the whole photo's differentiated pass goes to the ensemble's members in turn, one a
    step, instead of to the first member in every step; the views (same seed) are the same draws."""
    lite1 = load_model("efficientnet-lite1-gem", device="cpu")
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    counts = {}
    for whole in (True, "cycle"):
        passes = {0: 0, 1: 0}
        hooks = [m.features.register_forward_pre_hook(
            lambda _, inputs, k=k: passes.__setitem__(k, passes[k] + torch.is_grad_enabled()))
            for k, m in enumerate((model, lite1))]
        try:
            PIRE(ModelEnsemble([model, lite1]), eps=3 / 255, steps=4, size=SIZE, seed=0, whole_view=whole,
                 patience=None, target_similarity=None, tracker_views=TrackerViews(count=1, sizes=(64, 96)))(x)
        finally:
            for hook in hooks:
                hook.remove()
        counts[whole] = passes
    assert counts[True][0] - counts["cycle"][0] == 2 and counts["cycle"][1] - counts[True][1] == 2
    # each step's member is compared with its own descriptor of the original: the original is at distance 0
    cycled = PIRE(ModelEnsemble([model, lite1]), eps=3 / 255, steps=2, size=SIZE, seed=0, whole_view="cycle",
                  tracker_views=TrackerViews(count=1, sizes=(64, 96)))
    for step in (0, 1):
        zero = cycled.view_distance(x, x, torch.Generator().manual_seed(0), cycled.whole_targets(x), step=step)
        assert float(zero) == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError, match="whole_view must be one of"):
        PIRE(model, whole_view="each")


def test_the_original_is_described_once_per_member_when_every_member_has_a_whole_view(model, photo):
    """Where every member has a whole view (an ensemble with whole_view="cycle", one model with whole_view=True) the
    members' descriptors of the original (whole_targets) are the model's own descriptor of it: the attack describes
    the original once per member, not a second time as the model; with an ensemble's first member alone
    (whole_view=True) it describes the ensemble's as before."""
    lite1 = load_model("efficientnet-lite1-gem", device="cpu")
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    for attacked, whole, expected in ((ModelEnsemble([model, lite1]), "cycle", {0: 3, 1: 3}), (model, True, {0: 3}),
                                      (ModelEnsemble([model, lite1]), True, {0: 4, 1: 3})):
        members = (model, lite1)[:len(expected)]
        passes = {k: 0 for k in expected}
        hooks = [m.features.register_forward_pre_hook(
            lambda _, inputs, k=k: passes.__setitem__(k, passes[k] + (not torch.is_grad_enabled())))
            for k, m in enumerate(members)]
        try:
            attack = PIRE(attacked, eps=3 / 255, steps=1, size=SIZE, seed=0, whole_view=whole, patience=None,
                          target_similarity=None, view_reference="photo",
                          tracker_views=TrackerViews(count=1, sizes=(64, 96)))
            attack(x)
        finally:
            for hook in hooks:
                hook.remove()
        # without gradient, per member: the original (its whole target), its photo reference and the output's
        # similarity at the end; with the first member's whole target alone, the model's descriptor once more
        assert passes == expected, (whole, passes)
        torch.testing.assert_close(attack.original_descriptor, describe(attacked, x, SIZE), rtol=0, atol=1e-6)


def test_photo_reference_drops_the_forward_pass_of_each_view_of_the_original(model, photo):
    """view_reference="photo": each view is pushed from the original photo's descriptor, computed once, so a step
    runs the differentiated passes alone; "view" adds one pass without gradient a view."""
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    passes = []
    hook = model.features.register_forward_pre_hook(lambda _, inputs: passes.append(torch.is_grad_enabled()))
    try:
        counts = {}
        for reference in ("view", "photo"):
            passes.clear()
            PIRE(model, eps=3 / 255, steps=3, size=SIZE, seed=0, patience=None, view_reference=reference,
                 tracker_views=TrackerViews(count=2, sizes=(64, 96)))(x)
            counts[reference] = (sum(passes), len(passes) - sum(passes))  # (with gradient, without)
    finally:
        hook.remove()
    assert counts["view"][0] == counts["photo"][0] == 3 * (2 + 1)  # steps x (views + the whole photo)
    assert counts["view"][1] - counts["photo"][1] == 3 * 2 - 1  # a pass per view, less the photo's one


def test_view_sets_draw_the_first_steps_views_and_reuse_them_with_their_references(model, photo):
    """view_sets=k: steps k and later take the views of step t mod k again (the same inputs to the network) and
    their references computed then, so they run the differentiated passes alone."""
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    passes = []
    hook = model.features.register_forward_pre_hook(
        lambda _, inputs: passes.append((torch.is_grad_enabled(), tuple(inputs[0].shape))))
    try:
        runs = {}
        for sets in (None, 2):
            passes.clear()
            PIRE(model, eps=3 / 255, steps=5, size=SIZE, seed=0, patience=None, whole_view=False, view_sets=sets,
                 tracker_views=TrackerViews(count=2, sizes=(48, 96)))(x)
            runs[sets] = list(passes)
    finally:
        hook.remove()
    differentiated = {sets: [shape for grad, shape in run if grad] for sets, run in runs.items()}
    references = {sets: sum(not grad for grad, _ in run) for sets, run in runs.items()}
    assert len(differentiated[None]) == len(differentiated[2]) == 5 * 2
    assert differentiated[2][:4] == differentiated[None][:4]  # the first two steps draw as before
    assert differentiated[2][4:] == differentiated[2][:4] + differentiated[2][:2]  # then steps 0, 1, 0 again
    assert differentiated[None][4:] != differentiated[2][4:]  # (fresh views differ)
    assert references[None] - references[2] == 3 * 2  # no reference pass in the 3 steps that reuse their views
    for bad, message in ((0, "view_sets must be"), (1.5, "view_sets must be")):
        with pytest.raises(ValueError, match=message):
            PIRE(model, view_sets=bad)
    with pytest.raises(ValueError, match="needs view_reference='view'"):
        PIRE(model, view_sets=2, view_reference="photo")


def test_photo_reference_distance_is_to_the_photo_descriptor(model, photo):
    attack = PIRE(model, eps=4 / 255, steps=2, size=SIZE, seed=0, poolings=("gem", "spoc"), view_reference="photo",
                  tracker_views=TrackerViews(count=1, sizes=(96, 96), crop=(1.0, 1.0), flip=0, rotate=0, colour=0,
                                             jpeg_probability=0), whole_view=False)
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    references = attack.photo_references(x)
    assert len(references) == 1 and [r.shape for r in references[0]] == [(1, model(x).shape[1])] * 2
    # the only view is the whole photo at the working size: the photo's own descriptor, distance 0
    zero = attack.view_distance(x, x, torch.Generator().manual_seed(0), attack.whole_targets(x), references)
    assert float(zero) == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError, match="view_reference must be one of"):
        PIRE(model, view_reference="crop")


def test_the_feature_map_pooling_pushes_the_whole_map_of_each_view(model, photo):
    attack = PIRE(model, eps=4 / 255, steps=2, size=SIZE, seed=0, poolings=("gem", "map"),
                  tracker_views=TrackerViews(count=1, sizes=(96, 96), crop=(1.0, 1.0), flip=0, rotate=0, colour=0,
                                             jpeg_probability=0), whole_view=False)
    x = torch.nn.functional.interpolate(photo, size=(72, 96), mode="bilinear", antialias=True).clamp(0, 1)
    gem, flat = attack._pooled(model, x)
    fmap = model.feature_map(x)
    assert gem.shape == (1, fmap.shape[1]) and flat.shape == (1, fmap[0].numel())
    torch.testing.assert_close(flat, torch.nn.functional.normalize(fmap.flatten(1), dim=1))
    # the two halves of a photo swapped: the channels' means (SPoC) barely move while the map does, so the map's
    # distance sees changes a pooling can miss; at the attack's small working size, the distance it adds
    large = torch.nn.functional.interpolate(photo, size=(240, 320), mode="bilinear", antialias=True).clamp(0, 1)
    spoc, maps = [], []
    for v in (large, torch.cat([large[..., 160:], large[..., :160]], dim=-1)):
        spoc.append(model.pool_map(model.feature_map(v), "spoc"))
        maps.append(attack._pooled(model, v)[1])
    assert float(spoc[0] @ spoc[1].T) > 0.9 and float(maps[0] @ maps[1].T) < 0.8
    swapped = torch.cat([x[..., 48:], x[..., :48]], dim=-1)
    gem_swapped, flat_swapped = attack._pooled(model, swapped)
    targets = attack.whole_targets(x)
    assert float(attack.view_distance(x, x, torch.Generator().manual_seed(0), targets)) == pytest.approx(0, abs=1e-5)
    moved = attack.view_distance(swapped, x, torch.Generator().manual_seed(0), targets)
    # the distance is the mean of GeM's and the map's squared distances (one view, the whole photo)
    expected = ((gem_swapped - gem).pow(2).sum() + (flat_swapped - flat).pow(2).sum()) / 2
    torch.testing.assert_close(moved, expected.reshape(1), atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="pooling 'map' needs view_reference='view'"):
        PIRE(model, poolings=("gem", "map"), view_reference="photo", tracker_views=TrackerViews())
    with pytest.raises(ValueError, match="poolings must be among"):
        PIRE(model, poolings=("gem", "tensor"), tracker_views=TrackerViews())


def test_attack_with_tracker_views_moves_the_descriptor_within_its_bound(model, photo):
    attack = PIRE(model, eps=3 / 255, steps=4, size=SIZE, seed=0, tracker_views=TrackerViews(count=2, sizes=(64, 96)))
    x_adv = attack(photo)
    assert float((x_adv - photo).abs().max()) <= 3 / 255 + 1e-6
    assert attack.stats.similarity[0] < 0.99
    with pytest.raises(ValueError, match="give edits or tracker_views, not both"):
        from advquery.attacks import RandomEdits
        PIRE(model, edits=RandomEdits(), tracker_views=TrackerViews())


def test_spare_flat_leaves_flat_regions_untouched(model):
    torch.manual_seed(0)
    x = torch.full((1, 3, 72, 96), 0.5)
    x[..., 48:] = quantise(torch.rand(1, 3, 72, 48))  # right half textured
    x = quantise(x)
    gain = flat_gain(x)
    assert float(gain[..., :40].max()) == 0 and float(gain[..., 56:].min()) == 1
    attack = PIRE(model, eps=4 / 255, steps=3, size=SIZE, seed=0, spare_flat=2.0)
    x_adv = attack(x)
    assert torch.equal(x_adv[..., :40], x[..., :40])
    assert float((x_adv[..., 56:] - x[..., 56:]).abs().max()) > 0


def test_webp_share_turns_that_share_of_the_recompressions_into_webp():
    plain = TrackerViews(count=300, jpeg_probability=1.0).sample(torch.Generator().manual_seed(2))
    assert {v.recompression.kind for v in plain} == {"jpeg"}
    mixed = TrackerViews(count=300, jpeg_probability=1.0, webp_share=0.5).sample(torch.Generator().manual_seed(2))
    webp = [v for v in mixed if v.recompression.kind == "webp"]
    assert 100 < len(webp) < 200 and all(70 <= v.recompression.value <= 95 for v in webp)
    with pytest.raises(ValueError, match="webp_share must be a probability"):
        TrackerViews(webp_share=1.5)


def test_a_webp_view_is_the_webp_round_trip_of_the_plain_view_with_the_identity_gradient():
    x = F.avg_pool2d(torch.rand(1, 3, 64, 96), 3, 1, 1).requires_grad_(True)  # smooth: a photo-like input
    base = View(flip=False, angle=0.0, box=(0, 0, 1, 1), crop_file=False, size=96, colour=(1, 1, 1),
                recompression=None, model=0)
    webp = dataclasses.replace(base, recompression=Transform("webp", 75))
    out = webp(x)
    assert torch.allclose(out, webp_round_trip(base(x).detach(), 75), atol=1e-6)
    out.sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x))


def test_a_codec_blur_gives_the_recompressed_views_the_gradient_of_that_blur_and_leaves_the_others_alone():
    x = F.avg_pool2d(torch.rand(1, 3, 64, 96), 3, 1, 1).requires_grad_(True)
    jpeg = View(flip=False, angle=0.0, box=(0, 0, 1, 1), crop_file=False, size=96, colour=(1, 1, 1),
                recompression=Transform("jpeg", 80), model=0, codec_blur=1.5)
    weight = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    out = jpeg(x)
    assert torch.allclose(out, jpeg_round_trip(x.detach(), 80), atol=1e-6)  # forward: the codec itself
    (out * weight).sum().backward()
    inner = (..., slice(6, -6), slice(6, -6))  # away from the reflected borders, the blur is its own adjoint
    assert torch.allclose(x.grad[inner], gaussian_blur(weight, 1.5)[inner], atol=1e-5)  # backward: the blur's
    assert x.grad.std() < weight.std() / 2  # the high frequencies the codec removes get no push
    plain = dataclasses.replace(jpeg, recompression=None)
    assert torch.equal(plain(x), x)  # a view that is not re-compressed is not blurred
    drawn = TrackerViews(count=20, codec_blur=1.0).sample(torch.Generator().manual_seed(0))
    assert {v.codec_blur for v in drawn} == {1.0}
    again = TrackerViews(count=20).sample(torch.Generator().manual_seed(0))
    assert [dataclasses.replace(v, codec_blur=0.0) for v in drawn] == again  # the same draws as without it


def test_a_jpeg_gradient_gives_the_recompressed_views_the_gradient_of_the_jpeg_surrogate_at_their_quality():
    x = F.avg_pool2d(torch.rand(1, 3, 64, 96), 3, 1, 1).requires_grad_(True)
    jpeg = View(flip=False, angle=0.0, box=(0, 0, 1, 1), crop_file=False, size=96, colour=(1, 1, 1),
                recompression=Transform("jpeg", 75), model=0, jpeg_gradient=True)
    weight = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    out = jpeg(x)
    assert torch.allclose(out, jpeg_round_trip(x.detach(), 75), atol=1e-6)  # forward: the codec itself
    (out * weight).sum().backward()
    expected, = torch.autograd.grad((jpeg_surrogate(x, 75) * weight).sum(), x)
    assert torch.allclose(x.grad, expected, atol=1e-6) and not torch.allclose(x.grad, weight, atol=0.1)
    assert torch.equal(dataclasses.replace(jpeg, recompression=None)(x), x)  # a view not re-compressed: no surrogate
    drawn = TrackerViews(count=20, jpeg_gradient=True).sample(torch.Generator().manual_seed(0))
    assert {v.jpeg_gradient for v in drawn} == {True}
    again = TrackerViews(count=20).sample(torch.Generator().manual_seed(0))
    assert [dataclasses.replace(v, jpeg_gradient=False) for v in drawn] == again  # the same draws as without it
    assert repr(TrackerViews(jpeg_gradient=True)).endswith("jpeg_gradient=True)")
