"""Reduced-precision network passes: which dtype each setting picks, float32 descriptors under autocast,
and the attack and ``protect --precision`` with the real model on a real photo."""
import json
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import pytest
import torch

from advquery import PIRE, load_model
from advquery.cli.main import main
from advquery.io import read_photo, to_tensor
from advquery.models import precision
from advquery.models.precision import autocast, autocast_dtype, bfloat16_pays, native_bfloat16

CPU = torch.device("cpu")
SIZE = 96


@pytest.fixture(scope="module")
def model():
    return load_model("efficientnet-lite0-gem", device="cpu")


@pytest.fixture(scope="module")
def photo(ukbench_dir):
    return to_tensor(read_photo(ukbench_dir / "ukbench00000.jpg").rgb)


def test_precision_settings_pick_their_dtype(model):
    assert autocast_dtype("float32", model) is None
    assert autocast_dtype("bfloat16", model) is torch.bfloat16
    assert autocast_dtype("auto", model) is (torch.bfloat16 if native_bfloat16(CPU) and bfloat16_pays(model) else None)
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        autocast_dtype("float16", model)
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, float16, got 'half'"):
        autocast_dtype("half", model)


def test_auto_measures_bfloat16_once_per_machine_and_remembers_it(model, tmp_path, monkeypatch):
    """The measured choice is written to the cache folder and read back from there by the next process (here: with
    this process's memory cleared), so a doctored entry is obeyed without measuring again; a damaged file is
    measured again. The measurement is counted here, not run (it is timed in the next test): bfloat16 passes on a
    CPU without native bfloat16, which ``auto`` never probes, take minutes to set their kernels up."""
    monkeypatch.setenv("ADVQUERY_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "_CHOICES", {})
    measured = []
    monkeypatch.setattr(precision, "_pass_seconds", lambda m: measured.append(m.name) or (1.0, 0.8))
    assert bfloat16_pays(model) is True and measured == [model.name]  # 1.0 s >= BFLOAT16_GAIN x 0.8 s
    (key, entry), = json.loads((tmp_path / "precision.json").read_text()).items()
    assert model.name in key and f"{torch.get_num_threads()} threads" in key and "probe 448x448 + 768x1024" in key
    assert f"trunk {precision.trunk_code(model)}" in key and len(precision.trunk_code(model)) == 8
    assert entry == {"float32_s": 1.0, "bfloat16_s": 0.8, "bfloat16": True}
    (tmp_path / "precision.json").write_text(json.dumps({key: {**entry, "bfloat16": False}}))
    monkeypatch.setattr(precision, "_CHOICES", {})
    assert bfloat16_pays(model) is False and len(measured) == 1  # read, not measured again
    (tmp_path / "precision.json").write_text("{damaged")
    monkeypatch.setattr(precision, "_CHOICES", {})
    assert bfloat16_pays(model) is True and len(measured) == 2
    assert key in json.loads((tmp_path / "precision.json").read_text())


def test_probe_times_passes_in_both_precisions(model, monkeypatch):
    if not native_bfloat16(CPU):
        reason = "this CPU has no native bfloat16: auto takes float32 here without the probe"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    monkeypatch.setattr(precision, "PROBE_SHAPES", ((64, 64), (96, 128)))
    float32, bfloat16 = precision._pass_seconds(model, repeats=1)
    assert 0 < float32 < 60 and 0 < bfloat16 < 60


def test_descriptor_stays_float32_and_close_under_bfloat16(model, photo):
    x = torch.nn.functional.interpolate(photo, size=(96, 128), mode="bilinear", antialias=True)
    with torch.no_grad():
        exact = model(x)
        with autocast(torch.bfloat16, CPU):
            reduced = model(x)
    assert reduced.dtype == torch.float32
    assert torch.allclose(reduced.norm(dim=1), torch.ones(1), atol=1e-5)
    cosine = float((exact * reduced).sum())
    assert 0.98 < cosine < 1  # reduced precision, not the float32 computation again


def test_bfloat16_attack_stays_in_bound_and_moves_the_descriptor(model, photo):
    results = {}
    for precision in ("float32", "bfloat16"):
        attack = PIRE(model, eps=2 / 255, steps=4, size=SIZE, seed=0, precision=precision)
        x_adv = attack(photo)
        assert x_adv.dtype == torch.float32 and float((x_adv - photo).abs().max()) <= 2 / 255 + 1e-6
        results[precision] = x_adv, attack.stats.similarity[0]
    assert not torch.equal(results["float32"][0], results["bfloat16"][0])  # the passes did run in bfloat16
    assert results["bfloat16"][1] < 0.95 and abs(results["bfloat16"][1] - results["float32"][1]) < 0.1


def test_attack_checks_its_precision(model):
    with pytest.raises(ValueError, match="precision must be one of"):
        PIRE(model, precision="fp8")


def _run(argv):
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("extra, message", [
    (["--precision", "float16", "--device", "cpu"], "--precision: precision float16 needs a CUDA device, got cpu; use bfloat16 or float32"),
    (["--precision", "bfloat16", "--method", "noise"], "--precision applies to ssim-pire, pire, masked-pire, cv-pire, "
                                                       "sd-pire only, not to noise"),
])
def test_protect_refuses_a_precision_it_cannot_use(tmp_path, ukbench_dir, extra, message):
    code, err = _run(["protect", str(ukbench_dir / "ukbench00000.jpg"), "-o", str(tmp_path / "out"), *extra])
    assert code == 2 and err.strip() == f"advquery: error: {message}"
    assert not (tmp_path / "out").exists()


def test_protect_reports_the_precision_its_passes_ran_in(tmp_path, ukbench_dir, model):
    for precision in ("float32", "bfloat16", "auto"):
        report = tmp_path / f"{precision}.jsonl"
        code, _ = _run(["protect", str(ukbench_dir / "ukbench00000.jpg"), "-o", str(tmp_path / precision),
                        "--size", "64", "--steps", "2", "--seed", "0", "--precision", precision, "--report", str(report)])
        assert code == 0 and read_photo(tmp_path / precision / "ukbench00000.jpg").rgb.shape == (480, 640, 3)
        ran = json.loads(report.read_text())["precision"]  # what the passes ran in, auto resolved
        assert ran == (precision if precision != "auto" else "bfloat16" if native_bfloat16(CPU) and bfloat16_pays(model) \
            else "float32")
