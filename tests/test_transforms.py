"""Transformation specs and the edits they stand for, on small synthetic images."""
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from advquery.transforms import (Transform, TransformChain, _jpeg_blocks, gaussian_blur, jpeg_quantisers,
                                 jpeg_round_trip, jpeg_surrogate, parse_transform, quantise, straight_through)
from helpers import levels, on_grid


LEVEL = 1 / 255


def _image(h: int = 40, w: int = 60, seed: int = 0) -> torch.Tensor:
    return quantise(torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)))


def test_parse_spec_in_order_with_percentages():
    chain = parse_transform("jpeg:75, resize:50%,crop:0.8,blur:1.5")
    assert chain.steps == (Transform("jpeg", 75), Transform("resize", 0.5), Transform("crop", 0.8),
                           Transform("blur", 1.5))
    assert str(chain) == "jpeg:75,resize:0.5,crop:0.8,blur:1.5"
    assert parse_transform(str(chain)) == chain


@pytest.mark.parametrize("spec, message", [
    ("", "empty transformation spec"),
    ("spin:90", "unknown transformation 'spin'"),
    ("rotate:90", "rotate must be in"),
    ("flip:1", "flip takes no value"),
    ("jpeg:high", "expected jpeg:NUMBER"),
    ("jpeg:75.5", "jpeg must be an integer in"),
    ("jpeg:0", "jpeg must be an integer in"),
    ("crop:1.5", "crop must be in"),
    ("resize:0", "resize must be in"),
])
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_transform(spec)


def test_resize_and_crop_shapes_and_content():
    x = _image(40, 60)
    half = parse_transform("resize:0.5")(x)
    assert half.shape == (1, 3, 20, 30)
    assert parse_transform("resize:2")(x).shape == (1, 3, 80, 120)
    crop = parse_transform("crop:0.5")(x)
    assert crop.shape == (1, 3, 20, 30)
    torch.testing.assert_close(crop, x[..., 10:30, 15:45], atol=0, rtol=0)  # central, unchanged pixels


def test_chain_saves_every_step_as_8_bit():
    out = parse_transform("resize:0.7,blur:1")(_image())
    assert torch.equal(out, quantise(out))


def test_jpeg_step_is_lossy_and_lower_quality_loses_more():
    x = _image()
    err = {q: float((parse_transform(f"jpeg:{q}")(x) - x).abs().mean()) for q in (95, 50)}
    assert 0 < err[95] < err[50]


def test_blur_keeps_flat_images_and_the_mean_and_smooths():
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    x = _image(64, 64)
    y = gaussian_blur(x, 1.5)
    assert abs(float(y.mean() - x.mean())) < 2e-3
    assert float(y.diff(dim=-1).abs().mean()) < 0.5 * float(x.diff(dim=-1).abs().mean())
    assert gaussian_blur(_image(3, 3), 5.0).shape == (1, 3, 3, 3)  # kernel larger than the image


@pytest.mark.parametrize("shape,sigma", [((1, 3, 64, 48), 1.5), ((2, 3, 101, 37), 2.0), ((1, 3, 300, 400), 0.8)])
def test_blur_channels_last_makes_the_same_sums_and_gradient(shape, sigma):
    """A float32 colour image is blurred channels-last (quicker on a CPU): the values and the gradient of the two
    convolutions in the input's own layout, bit for bit, and a contiguous result."""
    def in_own_layout(x):
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
        kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1, 1, 1)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel, groups=x.shape[1])
        return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.transpose(-1, -2), groups=x.shape[1])

    x = torch.rand(shape, generator=torch.Generator().manual_seed(6))
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    results = []
    for blur in (gaussian_blur, lambda t, s: in_own_layout(t)):
        leaf = x.clone().requires_grad_()
        out = blur(leaf, sigma)
        (out * upstream).sum().backward()
        results.append((out.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][0].is_contiguous()


def test_resize_is_differentiable():
    x = _image().requires_grad_(True)
    parse_transform("resize:0.5").steps[0](x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_boxes_follow_resize_and_crop():
    shape = (100, 200)
    assert parse_transform("resize:0.5").map_box((20, 10, 120, 60), shape) == (10, 5, 60, 30)
    # crop:0.5 keeps rows 25..75 and columns 50..150: the box is shifted and clipped to it.
    assert parse_transform("crop:0.5").map_box((20, 10, 120, 60), shape) == (0, 0, 70, 35)
    assert parse_transform("crop:0.5").map_box((0, 0, 30, 20), shape) is None  # cropped away
    assert parse_transform("jpeg:75,blur:1").map_box((1, 2, 3, 4), shape) == (1, 2, 3, 4)
    assert TransformChain((Transform("resize", 2.0),)).map_box(None, shape) is None


def test_quantise_on_grid_and_nearest():
    x = torch.linspace(-0.2, 1.2, 2001).view(1, 1, 1, -1)
    q = quantise(x)
    assert on_grid(q) and float(q.min()) == 0 and float(q.max()) == 1
    inside = (x >= 0) & (x <= 1)
    assert float((q - x)[inside].abs().max()) <= 0.5 * LEVEL + 1e-7
    assert torch.equal(quantise(q), q)  # idempotent


def test_jpeg_round_trip_of_flat_image_stays_flat():
    x = torch.full((2, 3, 32, 48), 128 / 255)
    y = jpeg_round_trip(x, quality=90)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(levels(y, x).max()) <= 1 + 1e-4
    noisy = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    assert float(levels(jpeg_round_trip(noisy, quality=50), noisy).max()) > 5  # it is lossy on detail
    with pytest.raises(ValueError, match="JPEG quality must be in 1..100, got 0"):
        jpeg_round_trip(x, quality=0)


@pytest.mark.parametrize("quality", [50, 75, 85])
def test_the_jpeg_surrogates_linear_steps_are_the_codecs(quality):
    # a smooth image of odd size (partial blocks, an odd chroma border): its coefficients rounded to the quantisers'
    # levels between the surrogate's steps give what PIL's JPEG gives, within the codecs' integer arithmetic
    x = quantise(F.avg_pool2d(torch.rand(1, 3, 61, 83, generator=torch.Generator().manual_seed(0)), 5, 1, 2))
    real = jpeg_round_trip(x, quality)
    simulated = _jpeg_blocks(x, quality, None, lambda c, step: (c / step).round() * step).clamp(0, 1)
    assert levels(simulated, real).mean() < 0.5 * levels(x, real).mean()
    transposed = _jpeg_blocks(x, quality, None, lambda c, step: (c / step.reshape(8, 8).T.flatten()).round()
                              * step.reshape(8, 8).T.flatten()).clamp(0, 1)
    assert levels(simulated, real).mean() < levels(transposed, real).mean()  # the tables in JPEG's orientation
    assert torch.allclose(_jpeg_blocks(x, quality, None, lambda c, step: c), x if quality >= 90 else
                          _jpeg_blocks(x, quality, True, lambda c, step: c), atol=1e-5)


def test_jpeg_quantisers_are_libjpegs_scaled_tables():
    assert jpeg_quantisers(50)[0, 0, 0] == 16 and jpeg_quantisers(50)[1, 7, 7] == 99  # the standard's tables
    assert jpeg_quantisers(75)[0, 0, 0] == 8 and jpeg_quantisers(25)[0, 0, 0] == 32
    assert jpeg_quantisers(100).eq(1).all() and jpeg_quantisers(1).max() == 255  # baseline: 1-255


def test_the_jpeg_surrogates_slope_is_zero_at_a_level_and_three_halfway():
    # a flat grey block has one coefficient, its DC (8 x its grey level - 128); at quality 50 its step is 16
    for level, slope in ((128, 0.0), (129, 3.0), (130, 0.0)):  # DC 0 and 16: levels; DC 8: halfway
        x = torch.full((1, 3, 16, 16), level / 255, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as in an attack's views: float32 all the same
            out = jpeg_surrogate(x, 50, subsampling=False)
        out.mean().backward()
        assert out.dtype == torch.float32
        assert float(x.grad.sum()) == pytest.approx(slope, abs=1e-3)  # d(mean output) / d(uniform grey change)
    x = torch.full((1, 3, 16, 16), 129 / 255)
    assert torch.allclose(straight_through(x, partial(jpeg_round_trip, quality=50), partial(jpeg_surrogate, quality=50)),
                          jpeg_round_trip(x, 50), atol=1e-6)  # its value in a straight-through use: the codec's


@pytest.mark.parametrize("transform", [quantise, partial(jpeg_round_trip, quality=90)])
def test_straight_through_forward_value_and_identity_gradient(transform):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = straight_through(x, transform)
    torch.testing.assert_close(y, transform(x.detach()), atol=1e-6, rtol=0)
    (y * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0), atol=0, rtol=0)


def test_straight_through_takes_the_surrogates_gradient_when_given_one():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = straight_through(x, quantise, surrogate=lambda t: t ** 2)
    torch.testing.assert_close(y, quantise(x.detach()), atol=1e-6, rtol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


def test_apply_edits_a_decoded_photo_and_its_box_together():
    import numpy as np
    rgb = (np.arange(40 * 60 * 3) % 251).astype(np.uint8).reshape(40, 60, 3)
    out, box = parse_transform("crop:0.5,resize:2").apply(rgb, (20, 12, 40, 30))
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    assert box == (10, 4, 50, 40)  # shifted by the crop (15, 10), clipped to its 30 x 20, then doubled
    same, none = parse_transform("jpeg:95").apply(rgb)
    assert none is None and same.shape == rgb.shape and np.abs(same.astype(int) - rgb).mean() > 0


def _rgb(h: int = 40, w: int = 60):
    import numpy as np
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 4, yy * 6, (xx + yy) * 2 + 30], axis=2).clip(0, 255).astype(np.uint8)


def test_flip_mirrors_the_photo_and_its_box():
    x = _image(40, 60)
    torch.testing.assert_close(parse_transform("flip")(x), x.flip(-1), atol=0, rtol=0)
    assert parse_transform("flip").map_box((10, 5, 20, 15), (40, 60)) == (40, 5, 50, 15)
    assert str(parse_transform("flip,jpeg:80")) == "flip,jpeg:80"


@pytest.mark.parametrize("kind, window", [("crop-tl", (0, 0)), ("crop-tr", (0, 12)), ("crop-bl", (8, 0)),
                                          ("crop-br", (8, 12))])
def test_corner_crops_keep_their_corner(kind, window):
    x = _image(40, 60)
    top, left = window
    out = parse_transform(f"{kind}:0.8")(x)
    torch.testing.assert_close(out, x[..., top:top + 32, left:left + 48], atol=0, rtol=0)
    assert parse_transform(f"{kind}:0.8").map_box((20, 12, 30, 22), (40, 60)) == (20 - left, 12 - top, 30 - left,
                                                                                  22 - top)


@pytest.mark.parametrize("aspect, shape", [(1, (40, 40)), (0.8, (40, 32)), (16 / 9, (34, 60))])
def test_aspect_crops_are_the_largest_central_window(aspect, shape):
    assert tuple(parse_transform(f"aspect:{aspect}")(_image(40, 60)).shape[-2:]) == shape


def test_rotation_crops_its_borders_and_moves_the_box_with_the_content():
    import numpy as np
    rgb = np.zeros((90, 120, 3), np.uint8)
    rgb[10:20, 80:95] = 255  # a white patch right of the centre, near the top
    chain = parse_transform("rotate:10")
    out, box = chain.apply(rgb, (80, 10, 95, 20))
    h, w = out.shape[:2]
    assert (h, w) == chain.steps[0].shape((90, 120)) and h < 90 and w < 120
    ys, xs = np.nonzero(out[..., 0] > 128)
    cy, cx = ys.mean(), xs.mean()
    x1, y1, x2, y2 = box
    assert x1 <= cx <= x2 and y1 <= cy <= y2
    # counter-clockwise: a point right of the centre and above it moves left (and up, less); the crop shifts both
    assert cx - w / 2 < 87.5 - 60
    flat = torch.full((1, 3, 30, 40), 128 / 255)
    rotated = parse_transform("rotate:-3")(flat)
    torch.testing.assert_close(rotated, torch.full_like(rotated, 128 / 255))  # no border sampled


@pytest.mark.parametrize("spec, enhance", [("brightness:1.2", "Brightness"), ("contrast:1.3", "Contrast"),
                                           ("saturation:1.4", "Color")])
def test_colour_filters_match_pil_image_enhance(spec, enhance):
    import numpy as np
    from PIL import Image, ImageEnhance
    rgb = _rgb()
    ours, _ = parse_transform(spec).apply(rgb)
    factor = float(spec.split(":")[1])
    pil = np.asarray(getattr(ImageEnhance, enhance)(Image.fromarray(rgb)).enhance(factor))
    assert np.abs(ours.astype(int) - pil).max() <= 2  # PIL rounds grey and mean to integers first


def test_gamma_unsharp_and_webp():
    x = _image(40, 60)
    torch.testing.assert_close(parse_transform("gamma:0.5")(x), quantise(x.clamp_min(1e-6).sqrt()), atol=1e-6, rtol=0)
    smooth = gaussian_blur(x, 2.0)
    sharp = parse_transform("unsharp:1")(smooth)
    assert float(sharp.diff(dim=-1).abs().mean()) > float(smooth.diff(dim=-1).abs().mean())
    flat = torch.full((1, 3, 16, 16), 0.4)
    torch.testing.assert_close(parse_transform("unsharp:1")(flat), quantise(flat))
    err = float((parse_transform("webp:80")(x) - x).abs().mean())
    assert err > 0


def test_every_step_but_the_codecs_is_differentiable():
    for spec in ("flip", "rotate:3", "aspect:1", "crop-br:0.8", "unsharp:1", "brightness:1.1", "contrast:1.2",
                 "saturation:1.3", "gamma:0.8"):
        x = _image().requires_grad_(True)
        parse_transform(spec).steps[0](x).sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0, spec
