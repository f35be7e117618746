"""Descriptor models: GeM and whitening against hand-written references, the built-in
EfficientNet-Lite model's contract, and cirtorch checkpoints built here with random weights."""
import io
import re
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advquery.models import GeM, ModelError, Whitening, gem, load_model
from advquery.models import efficientnet_lite as lite_module
from advquery.models import pooling
from advquery.models.cirtorch import build_features
from advquery.models.efficientnet_lite import relu6_padded


def _smooth_images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """(n, 3, h, w) photo-like images in [0, 1]: coarse noise upsampled, so CNN features are not degenerate."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, h // 8), max(2, w // 8), generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- GeM


def test_gem_p1_is_average_pooling():
    x = torch.rand(2, 5, 4, 6, generator=torch.Generator().manual_seed(0)) + 0.01
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(2, 3)))


def test_gem_large_p_tends_to_max():
    x = torch.rand(2, 5, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.9 + 0.1
    top = x.amax(dim=(2, 3))
    n = x.shape[-1] * x.shape[-2]
    previous = None
    for p in (3.0, 30.0, 300.0):
        out = gem(x, torch.tensor(p, dtype=torch.float64))
        # max / n^(1/p) <= GeM_p <= max, so the gap closes as p grows.
        assert torch.all(out <= top + 1e-12)
        assert torch.all(out >= top * n ** (-1.0 / p) - 1e-12)
        if previous is not None:
            assert torch.all(out >= previous - 1e-12)  # power means grow with p
        previous = out
    torch.testing.assert_close(previous, top, rtol=0.01, atol=0)


def test_gem_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 3, 3, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    p = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, p: gem(x, p), (x, p))


@pytest.mark.parametrize("p", [3.0, 2.7])
def test_frozen_gem_takes_the_scalar_exponent_with_the_same_values_and_gradient(monkeypatch, p):
    exponents = []
    real = pooling.gem
    monkeypatch.setattr(pooling, "gem", lambda x, p, eps: exponents.append(p) or real(x, p, eps))
    x = torch.rand(2, 6, 5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.01
    learnable, frozen = GeM(p=p).double(), GeM(p=p).double().requires_grad_(False)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    learnable(a).sum().backward()
    frozen(b).sum().backward()
    assert isinstance(exponents[0], torch.Tensor) and type(exponents[1]) is float and exponents[1] == frozen.p.item()
    torch.testing.assert_close(frozen(x), learnable(x))
    torch.testing.assert_close(b.grad, a.grad)
    assert learnable.p.grad is not None


@pytest.mark.parametrize("p", [0.0, -1.0])
def test_gem_rejects_non_positive_p(p):
    with pytest.raises(ValueError, match="p must be positive"):
        GeM(p=p)


# ---------------------------------------------------------------------------------------- Whitening


def test_whitening_matches_hand_computation():
    rng = np.random.default_rng(3)
    d_in, d_out = 8, 5
    m = rng.normal(size=(d_in, 1))  # cirtorch stores m as a column
    P = rng.normal(size=(d_out, d_in))
    x = rng.normal(size=(4, d_in))
    expected = np.stack([P @ (row - m[:, 0]) for row in x])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    out = Whitening(torch.from_numpy(m), torch.from_numpy(P))(torch.from_numpy(x).float())
    assert out.shape == (4, d_out)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("P_shape", [(5, 7), (8,), (2, 5, 8)])
def test_whitening_rejects_bad_shapes(P_shape):
    with pytest.raises(ValueError, match=re.escape(f"got {P_shape}")):
        Whitening(torch.zeros(8), torch.zeros(P_shape))


# ------------------------------------------------------------------------------- built-in model


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet-lite0-gem", device="cpu")


def test_builtin_model_contract(lite0):
    x = _smooth_images(2, 96, 128, seed=4)
    out = lite0(x)
    assert out.shape == (2, 1280)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in lite0.parameters())
    assert not any(m.training for m in lite0.modules())
    assert lite0.name == "efficientnet-lite0-gem"
    # Two different images give different descriptors (the trunk really computes something).
    assert float(out[0] @ out[1]) < 0.999


def test_builtin_model_gradient_reaches_input(lite0):
    x = _smooth_images(1, 64, 80, seed=5).requires_grad_()
    lite0(x)[0, :10].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_descriptor_independent_of_batch_composition(lite0):
    a, b = _smooth_images(2, 96, 128, seed=6)
    with torch.inference_mode():
        alone = lite0(a[None])
        batched = lite0(torch.stack([b, a]))
    torch.testing.assert_close(batched[1:], alone, atol=1e-4, rtol=0)


def test_multiscale_descriptor(lite0):
    x = _smooth_images(1, 96, 128, seed=7)
    with torch.inference_mode():
        single = lite0(x)
        multi = lite0(x, scales=(1.0, 2 ** -0.5, 0.5))
    torch.testing.assert_close(multi.norm(dim=1), torch.ones(1), atol=1e-5, rtol=0)
    assert (multi - single).abs().max() > 1e-3


@pytest.mark.parametrize("shape", [(2, 5, 8, 6), (1, 4, 7, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_relu6_padded_equals_relu6_then_pad(shape, channels_last):
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 5)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    pads = [0, 1, 2, 1]  # left, right, top, bottom: asymmetric, as "SAME" pads strided convolutions
    upstream = torch.randn(shape[:2] + (shape[2] + 3, shape[3] + 1), generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda t: relu6_padded(t, pads), lambda t: F.pad(F.relu6(t), pads)):
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        (out * upstream).sum().backward()
        grads.append((out.detach(), leaf.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=0, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=0, rtol=0)
    assert grads[0][0].is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("size", [(96, 128), (75, 101)])
def test_lite_trunk_equals_explicit_same_padding(lite0, size, monkeypatch):
    """The trunk with the fused padding computes what ReLU6 followed by F.pad computes, forward and backward."""
    x = _smooth_images(1, *size, seed=9)
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(lite_module, "relu6_padded", lambda t, pads: F.pad(F.relu6(t), pads))
        leaf = x.clone().requires_grad_()
        out = lite0.feature_map(leaf)
        out.pow(2).sum().backward()
        results.append((out.detach(), leaf.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kernel,stride,size", [(3, (2, 2), (11, 14)), (5, (2, 2), (12, 9)), (2, (2, 2), (8, 8)),
                                                (1, (2, 2), (7, 10)), (3, (3, 2), (13, 10)), (4, (3, 3), (10, 11))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_strided_depthwise_gradient_by_phases_equals_torch(kernel, stride, size, channels_last):
    """The phases' input gradient is the convolution's: any kernel against the stride (smaller too), odd and even
    sizes, rows past the last output's reach (they get 0), both layouts; forward unchanged, the bias's gradient."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 5, *size, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    weight = torch.randn(5, 1, kernel, kernel, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    results = []
    for conv in (lambda t, b: lite_module._StridedDepthwise.apply(t, weight, b, stride),
                 lambda t, b: F.conv2d(t, weight, b, stride, 0, 1, 5)):
        leaf, b = x.clone().requires_grad_(), bias.clone().requires_grad_()
        out = conv(leaf, b)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
        (out * upstream).sum().backward()
        results.append((out.detach(), leaf.grad, b.grad))
    for ours, torchs in zip(*results):
        torch.testing.assert_close(ours, torchs, atol=1e-12, rtol=1e-12)
    assert results[0][1].is_contiguous(memory_format=torch.channels_last) == channels_last


def test_lite_trunk_in_bfloat16_takes_the_phases_with_torchs_gradient(lite0, monkeypatch):
    """Under bfloat16 autocast the strided depthwise convolutions take the phases' backward (four in Lite0), and the
    input gradient is torch's own within bfloat16's rounding; in float32 they keep torch's."""
    x = _smooth_images(1, 96, 128, seed=13)
    calls = []
    phases = lite_module._StridedDepthwise.apply
    monkeypatch.setattr(lite_module._StridedDepthwise, "apply", lambda *a: calls.append(1) or phases(*a))
    lite0.feature_map(x.clone().requires_grad_()).sum().backward()
    assert calls == []  # float32
    grads = []
    for use_phases in (True, False):
        if not use_phases:
            monkeypatch.setattr(lite_module._StridedDepthwise, "apply",
                                lambda t, w, b, stride: F.conv2d(t, w, b, stride, 0, 1, t.shape[1]))
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lite0.feature_map(leaf)
        out.float().pow(2).sum().backward()
        grads.append(leaf.grad)
    assert len(calls) == 4
    assert F.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0) > 0.999
    torch.testing.assert_close(grads[0], grads[1], atol=0.02 * float(grads[1].abs().max()), rtol=0.05)


def test_model_rejects_wrong_input_shape(lite0):
    with pytest.raises(ValueError, match=re.escape("got shape (1, 4, 32, 32)")):
        lite0(torch.zeros(1, 4, 32, 32))


def test_unknown_model_name_lists_available():
    with pytest.raises(ModelError, match="efficientnet-lite0-gem") as info:
        load_model("no-such-model", device="cpu")
    assert "no-such-model" in str(info.value)


# ---------------------------------------------------------------------------- cirtorch checkpoints

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TOL = 1e-4


def _assert_informative(v: torch.Tensor) -> None:
    """The two reference descriptors differ by far more than the tolerance, so matching them means something."""
    assert (v[0] - v[1]).abs().max() > 20 * TOL


def _random_features(architecture: str, seed: int) -> torch.nn.Module:
    """A cirtorch trunk with random weights everywhere, batch-norm statistics included (He-normal
    convolutions and near-identity batch norms, so the descriptor still depends on the input)."""
    g = torch.Generator().manual_seed(seed)
    features = build_features(architecture)
    with torch.no_grad():
        for module in features.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.01)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.01)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.01)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    return features.eval()


def _two_photos(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """(2, 3, h, w): a reddish and a bluish textured image, different enough for random trunks to tell apart."""
    x = _smooth_images(2, h, w, seed)
    tint = torch.tensor([[1.0, 0.5, 0.1], [0.1, 0.5, 1.0]]).view(2, 3, 1, 1)
    return x * tint


def _cirtorch_checkpoint(architecture: str, whitening: bool, seed: int = 0) -> dict:
    """A checkpoint in cirtorch's own layout (``{'meta', 'state_dict'}``) with random weights."""
    features = _random_features(architecture, seed)
    dim = 2048 if architecture.startswith("resnet") else 512
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["pool.p"] = torch.tensor([2.7])
    meta = {"architecture": architecture, "pooling": "gem", "whitening": whitening, "mean": MEAN, "std": STD,
            "outputdim": dim, "local_whitening": False, "regional": False}
    if whitening:
        g = torch.Generator().manual_seed(seed + 2)
        state["whiten.weight"] = torch.randn(dim, dim, generator=g) / dim ** 0.5
        state["whiten.bias"] = torch.randn(dim, generator=g) * 0.01
        rng = np.random.default_rng(seed)
        meta["Lw"] = {"retrieval-SfM-120k": {
            "ss": {"m": rng.normal(size=(dim, 1)) * 0.01, "P": rng.normal(size=(dim, dim)) / dim ** 0.5},
            "ms": {"m": (rng.normal(size=(dim, 1)) * 0.01).astype(np.float32),
                   "P": (rng.normal(size=(dim, dim)) / dim ** 0.5).astype(np.float32)}}}
    return {"meta": meta, "state_dict": state}


def _l2n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _by_hand(ckpt: dict, x: torch.Tensor, lw: str | None = "ss") -> torch.Tensor:
    """features -> GeM -> L2 -> whiten -> L2 -> Lw P (x - m) -> L2, written out from the checkpoint alone."""
    meta, state = ckpt["meta"], ckpt["state_dict"]
    features = build_features(meta["architecture"])
    features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    features.eval()
    mean, std = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        fmap = features((x - mean) / std)
        p = state["pool.p"]
        v = _l2n(fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p))
        if meta["whitening"]:
            v = _l2n(v @ state["whiten.weight"].T + state["whiten.bias"])
        if lw is not None and "Lw" in meta:
            w = meta["Lw"]["retrieval-SfM-120k"][lw]
            m, P = torch.from_numpy(w["m"]).float().T, torch.from_numpy(w["P"]).float()
            v = _l2n((v - m) @ P.T)
    return v


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    ckpt = _cirtorch_checkpoint("resnet50", whitening=True)
    path = tmp_path_factory.mktemp("ckpt") / "retrievalSfM120k-resnet50-gem-w-random.pth"
    torch.save(ckpt, path)
    return path, ckpt


def test_cirtorch_resnet_checkpoint_round_trip(resnet_checkpoint):
    path, ckpt = resnet_checkpoint
    model = load_model(path, device="cpu")
    assert path.name in model.name
    assert not any(p.requires_grad for p in model.parameters())
    x = _two_photos(seed=8)
    with torch.inference_mode():
        out = model(x)
    expected = _by_hand(ckpt, x)
    assert out.shape == (2, 2048)
    _assert_informative(expected)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    # Other random weights give another descriptor: the file's weights were really loaded.
    assert (_by_hand(_cirtorch_checkpoint("resnet50", whitening=True, seed=1), x) - out).abs().max() > 20 * TOL


def test_cirtorch_multiscale_uses_ms_whitening(resnet_checkpoint):
    path, ckpt = resnet_checkpoint
    model = load_model(path, device="cpu")
    x = _two_photos(seed=9)
    scales = (1.0, 2 ** -0.5, 0.5)
    with torch.inference_mode():
        out = model(x, scales=scales)
    # cirtorch multi-scale with a whitened net: mean of the per-scale descriptors, L2, then Lw['ms'].
    per_scale = [_by_hand(ckpt, x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear",
                                                                align_corners=False, antialias=True), lw=None)
                 for s in scales]
    w = ckpt["meta"]["Lw"]["retrieval-SfM-120k"]["ms"]
    m, P = torch.from_numpy(w["m"]).float().T, torch.from_numpy(w["P"]).float()
    expected = _l2n((_l2n(torch.stack(per_scale).mean(0)) - m) @ P.T)
    _assert_informative(expected)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def vgg_checkpoint():
    return _cirtorch_checkpoint("vgg16", whitening=False, seed=10)


def test_cirtorch_vgg16_without_whitening(vgg_checkpoint, tmp_path):
    path = tmp_path / "vgg16-gem.pth"
    torch.save(vgg_checkpoint, path)
    model = load_model(path, device="cpu")
    x = _two_photos(seed=11)
    with torch.inference_mode():
        out = model(x)
    expected = _by_hand(vgg_checkpoint, x)
    assert out.shape == (2, 512)
    _assert_informative(expected)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)


def _as_numpy1_pickle(data: bytes) -> bytes:
    """A torch zip checkpoint as numpy 1 writes it: arrays pickled via numpy.core.multiarray._reconstruct."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            payload = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in payload
                payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(info, payload)
    return out.getvalue()


def test_cirtorch_checkpoint_written_by_numpy1_loads(tmp_path):
    """Published cirtorch checkpoints were saved with numpy 1, whose arrays name numpy.core, not numpy._core."""
    ckpt = _cirtorch_checkpoint("vgg16", whitening=True, seed=12)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    path = tmp_path / "numpy1.pth"
    path.write_bytes(_as_numpy1_pickle(buf.getvalue()))
    model = load_model(path, device="cpu")
    x = _two_photos(seed=13)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), _by_hand(ckpt, x), atol=TOL, rtol=0)


def test_cirtorch_checkpoint_key_mismatch_names_keys(vgg_checkpoint, tmp_path):
    state = dict(vgg_checkpoint["state_dict"])
    state["features.99.weight"] = torch.zeros(3)
    del state["features.2.bias"]
    path = tmp_path / "bad-keys.pth"
    torch.save({"meta": vgg_checkpoint["meta"], "state_dict": state}, path)
    with pytest.raises(ModelError, match="features.99.weight") as info:
        load_model(path, device="cpu")
    message = str(info.value)
    assert "features.2.bias" in message and "missing" in message and "unexpected" in message
    assert str(path) in message


def test_non_checkpoint_file_raises_with_path(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(14).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match=re.escape(str(path))):
        load_model(path, device="cpu")


def test_torch_file_that_is_not_cirtorch_raises(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ModelError, match="not a cirtorch checkpoint"):
        load_model(path, device="cpu")
