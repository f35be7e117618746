"""Transformation specs and the edits they stand for, on small synthetic images."""
from functools import partial

import pytest
import torch

from advquery.transforms import (Transform, TransformChain, gaussian_blur, jpeg_round_trip, parse_transform, quantise,
                                 straight_through)
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
    ("rotate:90", "unknown transformation 'rotate'"),
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


@pytest.mark.parametrize("transform", [quantise, partial(jpeg_round_trip, quality=90)])
def test_straight_through_forward_value_and_identity_gradient(transform):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = straight_through(x, transform)
    torch.testing.assert_close(y, transform(x.detach()), atol=1e-6, rtol=0)
    (y * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0), atol=0, rtol=0)


def test_apply_edits_a_decoded_photo_and_its_box_together():
    import numpy as np
    rgb = (np.arange(40 * 60 * 3) % 251).astype(np.uint8).reshape(40, 60, 3)
    out, box = parse_transform("crop:0.5,resize:2").apply(rgb, (20, 12, 40, 30))
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    assert box == (10, 4, 50, 40)  # shifted by the crop (15, 10), clipped to its 30 x 20, then doubled
    same, none = parse_transform("jpeg:95").apply(rgb)
    assert none is None and same.shape == rgb.shape and np.abs(same.astype(int) - rgb).mean() > 0
