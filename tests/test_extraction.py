"""Working-size preprocessing and batched descriptor extraction, checked against PIL and
against calling the model image by image."""
import numpy as np
import pytest
import torch
from PIL import Image

from advquery.extraction import crop_box, extract_descriptors, prepare, resize_long_side
from advquery.io import read_photo, to_tensor, write_photo_atomic
from advquery.models import load_model

# ------------------------------------------------------------------------------ resize_long_side


@pytest.mark.parametrize("hw, size", [((300, 400), 200), ((480, 640), 96), ((97, 33), 128), ((50, 50), 7)])
def test_resize_long_side_keeps_aspect(hw, size):
    h, w = hw
    out = resize_long_side(torch.rand(1, 3, h, w), size)
    oh, ow = out.shape[-2:]
    assert max(oh, ow) == size
    assert (oh >= ow) == (h >= w)
    long_in, short_in = max(h, w), min(h, w)
    assert abs(min(oh, ow) - short_in * size / long_in) <= 1


@pytest.mark.parametrize("size", [48, 160])  # down (antialiased) and up
def test_resize_long_side_keeps_a_flat_image_flat(size):
    out = resize_long_side(torch.full((1, 3, 60, 80), 0.3), size)
    torch.testing.assert_close(out, torch.full_like(out, 0.3))


def test_resize_long_side_is_differentiable():
    x = torch.rand(1, 3, 60, 80, dtype=torch.float64, requires_grad=True)
    resize_long_side(x, 40).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.9  # every pixel contributes to the downscaled image
    y = torch.rand(1, 3, 12, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: resize_long_side(t, 8), (y,))


def test_resize_long_side_noop_at_size():
    x = torch.rand(2, 3, 30, 45)
    assert torch.equal(resize_long_side(x, 45), x)


# -------------------------------------------------------------------------------------- crop_box


@pytest.mark.parametrize("box", [(3.4, 2.6, 20.5, 15.5), (0, 0, 30, 20), (1.5, 2.5, 3.5, 4.5), (10.49, 0.51, 29.6, 19.4)])
def test_crop_box_rounds_like_pil(box):
    rgb = np.arange(20 * 30 * 3, dtype=np.uint32).reshape(20, 30, 3).astype(np.uint8)
    expected = np.asarray(Image.fromarray(rgb).crop(box))
    out = crop_box(to_tensor(rgb), box)
    got = (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("box", [(40, 0, 50, 10), (0, 25, 10, 30), (10, 5, 10, 15), (-10, -10, -2, -1)])
def test_crop_box_outside_image_raises(box):
    with pytest.raises(ValueError, match="does not overlap the 30x20 image"):
        crop_box(torch.zeros(1, 3, 20, 30), box)


# --------------------------------------------------------------------------------------- prepare


def test_prepare_scales_box_crop_like_the_whole_image():
    h, w = 300, 400
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = torch.stack([xx, yy, (xx + yy) / 2])[None]  # smooth, so resize and crop nearly commute
    assert prepare(x, 200).shape[-2:] == (150, 200)  # factor 0.5
    box = (100, 60, 200, 140)  # 100 x 80 px
    crop = prepare(x, 200, box)
    assert crop.shape[-2:] == (40, 50)
    # The same region of the prepared whole image looks the same.
    region = prepare(x, 200)[..., 30:70, 50:100]
    assert (crop - region).abs().max() < 0.02


# ------------------------------------------------------------------------------ extract_descriptors


@pytest.fixture(scope="module")
def model():
    return load_model("efficientnet-lite0-gem", device="cpu")


def _by_hand(model, path, size):
    with torch.inference_mode():
        return model(prepare(to_tensor(read_photo(path).rgb), size))[0].numpy()


def test_extract_descriptors_matches_model_in_input_order(model, ukbench_dir, tmp_path):
    photos = sorted(ukbench_dir.glob("*.jpg"))[:5]
    # A portrait crop has another working-size shape, so it is batched apart and flushed last.
    portrait = tmp_path / "portrait.png"
    write_photo_atomic(portrait, read_photo(photos[0]).rgb[:, 100:400], format="PNG")
    paths = [photos[4], portrait, photos[2], photos[0], photos[3], photos[1]]
    result = extract_descriptors(model, paths, size=128, batch_size=4, progress=False)
    assert result.failures == []
    assert result.paths == paths
    assert result.descriptors.shape == (6, 1280) and result.descriptors.dtype == np.float32
    expected = np.stack([_by_hand(model, p, 128) for p in paths])
    np.testing.assert_allclose(result.descriptors, expected, atol=1e-4)
    assert np.abs(expected[3] - expected[5]).max() > 1e-2  # distinct photos, distinct rows


def test_extract_descriptors_skips_unreadable_file(model, ukbench_dir, tmp_path):
    photos = sorted(ukbench_dir.glob("*.jpg"))[:2]
    broken = tmp_path / "empty.jpg"
    broken.write_bytes(b"")
    result = extract_descriptors(model, [photos[0], broken, photos[1]], size=96, progress=False)
    assert result.paths == [photos[0], photos[1]]
    assert len(result.failures) == 1 and "empty.jpg" in result.failures[0]
    assert result.descriptors.shape == (2, 1280)
    np.testing.assert_allclose(result.descriptors[1], _by_hand(model, photos[1], 96), atol=1e-4)


def test_extract_descriptors_all_unreadable(model, tmp_path):
    broken = tmp_path / "not-a-photo.jpg"
    broken.write_text("hello")
    result = extract_descriptors(model, [broken], size=96, progress=False)
    assert result.paths == [] and result.descriptors.shape[0] == 0
    assert len(result.failures) == 1 and "not-a-photo.jpg" in result.failures[0]
