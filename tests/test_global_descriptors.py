"""Tests for advquery.handcrafted: CEDD and GIST global descriptors, on properties of synthetic images
and on nearest neighbours among real UKBench images."""
import numpy as np
import pytest
from PIL import Image

from advquery.handcrafted import TEXTURE_CLASSES, cedd, gist, l2_distances, tanimoto

RED, BLUE = 4, 19  # CEDD colour bins of saturated, bright red and blue (white, grey, black, then 3 per hue)
S, O, K = 4, 8, 4  # GIST scales, orientations, grid; vector.reshape(S, O, grid column, grid row)


def _flat(rgb, h=120, w=160):
    return np.full((h, w, 3), rgb, np.uint8)


def _grey(values):
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=2)


def _smooth(h, w, seed=0):
    """Random colours interpolated smoothly: varied colour and texture, no white noise."""
    small = np.random.default_rng(seed).integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def _stripes(size, width, vertical):
    """Black and white stripes of ``width`` pixels, varying along x if ``vertical``."""
    line = (np.arange(size) // width % 2) * 255
    return _grey(np.broadcast_to(line[None, :] if vertical else line[:, None], (size, size)))


def _grating(vertical, size=256, period=8):
    line = 127.5 + 127.5 * np.cos(2 * np.pi * np.arange(size) / period)
    return _grey(np.rint(np.broadcast_to(line[None, :] if vertical else line[:, None], (size, size))))


def _texture_mass(descriptor):
    return descriptor.reshape(len(TEXTURE_CLASSES), 24).sum(axis=1)


# ---------------------------------------------------------------- CEDD

@pytest.mark.parametrize("shape", [(97, 131), (2, 2), (768, 1024)])
def test_cedd_shape_and_levels(shape):
    d = cedd(np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8))
    assert d.shape == (144,) and d.dtype == np.float32
    assert np.all(d == np.round(d)) and d.min() >= 0 and d.max() <= 7 and d.max() > 0


@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 0, 255), (128, 128, 128), (0, 0, 0), (30, 200, 90)])
def test_cedd_uniform_image_is_all_non_edge(colour):
    mass = _texture_mass(cedd(_flat(colour)))
    assert mass[0] > 0 and mass[1:].sum() == 0


def test_cedd_red_and_blue_fall_in_their_colour_bins():
    red, blue = cedd(_flat((255, 0, 0))), cedd(_flat((0, 0, 255)))
    assert np.flatnonzero(red).tolist() == [RED] and red[RED] == 7  # all the mass: top level
    assert np.flatnonzero(blue).tolist() == [BLUE] and blue[BLUE] == 7
    assert tanimoto(red, blue[None])[0] == 0


@pytest.mark.parametrize("vertical", [True, False])
def test_cedd_stripes_fill_their_edge_class(vertical):
    # 320 pixels: blocks of 8, so 4-pixel stripes put an edge in the middle of every block
    mass = _texture_mass(cedd(_stripes(320, 4, vertical)))
    expected, other = (TEXTURE_CLASSES.index(c) for c in (("vertical", "horizontal") if vertical
                                                           else ("horizontal", "vertical")))
    assert mass[expected] > 0 and mass.argmax() == expected and mass[other] == 0


def test_cedd_is_invariant_to_2x_upscaling():
    # 160 x 240 and 320 x 480 have blocks of 4 x 6 and 8 x 12 pixels: the same blocks, twice as big
    img = _smooth(160, 240)
    np.testing.assert_array_equal(cedd(img), cedd(img.repeat(2, axis=0).repeat(2, axis=1)))


@pytest.mark.parametrize("bad", [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10), np.uint8),
                                 np.zeros((1, 10, 3), np.uint8)])
def test_cedd_rejects_bad_images(bad):
    with pytest.raises(ValueError):
        cedd(bad)


def test_tanimoto_properties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 8, (6, 144)).astype(np.float32)
    sim = np.stack([tanimoto(row, x) for row in x])
    np.testing.assert_allclose(np.diag(sim), 1.0)
    np.testing.assert_allclose(sim, sim.T)
    assert sim.min() >= 0 and sim.max() <= 1 + 1e-12
    zero = np.zeros(144)
    assert tanimoto(zero, zero[None])[0] == 1.0  # 0/0 defined as identical
    assert tanimoto(zero, x[:1])[0] == 0.0
    with pytest.raises(ValueError):
        tanimoto(x[0], x[:, :10])


# ---------------------------------------------------------------- GIST

def test_gist_shape_and_parameters():
    img = _smooth(100, 150)
    g = gist(img)
    assert g.shape == (512,) and g.dtype == np.float32 and np.all(np.isfinite(g)) and g.min() >= 0
    assert gist(img, image_size=64, scales=2, orientations=4, grid=2).shape == (2 * 4 * 2 * 2,)
    assert gist(img, image_size=97, grid=3).shape == (4 * 8 * 9,)


@pytest.mark.parametrize("name, value", [("image_size", 0), ("scales", 0), ("orientations", 2.5),
                                         ("grid", True), ("grid", 300)])
def test_gist_rejects_bad_parameters(name, value):
    with pytest.raises(ValueError, match=name):
        gist(_smooth(64, 64), **{name: value})


def test_gist_rejects_bad_image():
    with pytest.raises(ValueError, match="uint8"):
        gist(np.zeros((64, 64, 3)))


def test_gist_constant_image_has_no_energy():
    assert np.abs(gist(_flat((90, 140, 200), 50, 70))).max() < 1e-6


def test_gist_gratings_excite_their_orientation():
    # orientation 0 passes horizontal frequencies (vertical bars), O / 2 vertical ones (horizontal bars)
    for vertical, expected in ((True, 0), (False, O // 2)):
        energy = gist(_grating(vertical)).reshape(S, O, K, K).sum(axis=(0, 2, 3))
        assert energy.argmax() == expected and energy[expected] > 0.5 * energy.sum()


def test_gist_is_nearly_invariant_to_brightness_scaling():
    img = _smooth(256, 256, seed=3)
    g, dark = gist(img), gist(np.rint(img * 0.5).astype(np.uint8))
    assert np.linalg.norm(g - dark) < 0.01 * np.linalg.norm(g)


def test_gist_mirror_permutes_orientations_and_columns():
    img = _smooth(256, 256, seed=4)
    g, flipped = gist(img).reshape(S, O, K, K), gist(img[:, ::-1].copy()).reshape(S, O, K, K)
    mirrored = g[:, (-np.arange(O)) % O][:, :, ::-1]  # angle -> -angle, column c -> K-1-c
    assert np.linalg.norm(flipped - mirrored) < 0.01 * np.linalg.norm(g)
    assert np.linalg.norm(flipped - g) > 0.1 * np.linalg.norm(g)  # the permutation is not trivial


def test_l2_distances():
    x = np.random.default_rng(2).normal(size=(5, 512))
    d = l2_distances(x[0], x)
    assert d[0] == 0 and np.allclose(d[1:], np.linalg.norm(x[1:] - x[0], axis=1))
    with pytest.raises(ValueError):
        l2_distances(x, x)


# ---------------------------------------------------------------- real images

def test_nearest_neighbours_on_ukbench(ukbench_dir):
    """Two UKBench groups of 4 views of one object. Measured: every image's nearest other image is
    in its group for both descriptors (8 of 8; chance gives 3/7 each, 3.4 of 8 expected)."""
    images = [np.asarray(Image.open(ukbench_dir / f"ukbench{i:05d}.jpg").convert("RGB")) for i in range(8)]
    group = np.arange(8) // 4
    for describe, similarity in ((cedd, tanimoto), (gist, lambda q, db: -l2_distances(q, db))):
        vectors = np.stack([describe(img) for img in images])
        scores = np.stack([similarity(v, vectors) for v in vectors])
        np.fill_diagonal(scores, -np.inf)
        hits = int((group[scores.argmax(axis=1)] == group).sum())
        assert hits >= 6, f"{describe.__name__}: only {hits} of 8 nearest neighbours in the same group"
