"""``advquery protect`` run in-process on a folder of real and broken photos, at a tiny working size."""
import hashlib
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from advquery.cli.main import main
from advquery.io import OUTPUT_RECORDS, read_photo
from advquery.outputs import OutputRecords
from advquery.protection import STRENGTHS
from helpers import blob_scene, exif_with_gps

FAST = ["--size", "96", "--steps", "3", "--seed", "0"]
REPORT_KEYS = {"input", "output", "status", "ssim", "psnr", "linf", "mean_abs_change", "similarity", "steps",
               "precision", "seconds"}
BAD = {"bad.jpg": "not an image", "empty.png": "empty file", "tiny.png": "too small",
       "anim.png": "animated images are not supported", "anim.gif": "animated images are not supported"}
GOOD = {"a.jpg": "JPEG", "sub/b.jpg": "JPEG", "alpha.png": "PNG"}


def _run(argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one command (usable in module-scoped fixtures)."""
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _files(folder: Path) -> set[str]:
    """Every file below ``folder`` but the records of which input made each output (.advquery/outputs/*.json)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not (p.parent == folder / OUTPUT_RECORDS and p.suffix == ".json")}


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A textured (H, W, 3) uint8 test picture: colour gradients plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 200 / w, yy * 200 / h, (xx + yy) * 100 / (h + w)], axis=2) + 20
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _strict_json(line: str) -> dict:
    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")
    return json.loads(line, parse_constant=reject)


# ------------------------------------------------------------------------------ a mixed folder


@pytest.fixture(scope="module")
def batch(ukbench_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("protect")
    inp = root / "in"
    (inp / "sub").mkdir(parents=True)
    shutil.copy(ukbench_dir / "ukbench00000.jpg", inp / "a.jpg")
    shutil.copy(ukbench_dir / "ukbench00004.jpg", inp / "sub" / "b.jpg")
    alpha = np.tile(np.linspace(0, 255, 80).round().astype(np.uint8), (60, 1))  # 0..255, every value kind
    Image.fromarray(np.dstack([_smooth(60, 80), alpha]), "RGBA").save(inp / "alpha.png")
    (inp / "bad.jpg").write_text("this is not a photo\n")
    (inp / "empty.png").write_bytes(b"")
    Image.fromarray(_smooth(10, 10)).save(inp / "tiny.png")
    frames = [Image.new("RGB", (48, 48), c) for c in ("red", "blue")]
    frames[0].save(inp / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(inp / "anim.png", save_all=True, append_images=frames[1:], duration=100)  # APNG
    before = _hashes(inp)
    out, report = root / "out", root / "report.jsonl"
    # A folder lists image extensions only (GIF is none), so the animated GIF is also given as a file.
    code, stdout, stderr = _run(["protect", str(inp), str(inp / "anim.gif"), "-o", str(out), "--recursive",
                                 "--report", str(report), *FAST])
    return {"root": root, "in": inp, "out": out, "before": before, "after": _hashes(inp), "code": code,
            "stdout": stdout, "stderr": stderr, "report": report}


def test_batch_exit_code_and_one_error_line_per_bad_file(batch):
    assert batch["code"] == 1
    stderr = batch["stderr"]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("advquery: error:")]
    assert len(errors) == len(BAD), stderr
    for name, reason in BAD.items():
        lines = [line for line in errors if line.split("error: ", 1)[1].startswith(str(batch["in"] / name) + ":")]
        assert len(lines) == 1 and reason in lines[0], (name, errors)
    assert "protected 3, skipped 0 existing (use --overwrite), failed 5" in stderr


def test_batch_outputs_keep_relative_paths_and_formats(batch):
    out = batch["out"]
    assert _files(out) == set(GOOD)  # nothing for the bad files, no temporary files left
    for rel, fmt in GOOD.items():
        with Image.open(out / rel) as img:
            assert img.format == fmt
            with Image.open(batch["in"] / rel) as orig:
                assert img.size == orig.size
    assert read_photo(out / "a.jpg").size == (640, 480)


def test_batch_png_alpha_kept_exactly(batch):
    original, protected = read_photo(batch["in"] / "alpha.png"), read_photo(batch["out"] / "alpha.png")
    assert protected.alpha is not None
    np.testing.assert_array_equal(protected.alpha, original.alpha)
    assert not np.array_equal(protected.rgb, original.rgb)


def test_batch_inputs_untouched(batch):
    assert batch["after"] == batch["before"]


def test_batch_report(batch):
    lines = batch["report"].read_text().splitlines()
    records = {Path(r["input"]): r for r in map(_strict_json, lines)}
    expected_inputs = {batch["in"] / name for name in [*GOOD, *BAD]}
    assert len(lines) == len(expected_inputs) and set(records) == expected_inputs
    eps_levels = STRENGTHS["medium"].budget_levels()
    for rel in GOOD:
        r = records[batch["in"] / rel]
        assert REPORT_KEYS <= set(r)
        assert r["status"] == "protected" and Path(r["output"]) == batch["out"] / rel
        assert 0 < r["ssim"] <= 1 and r["psnr"] > 30
        # Photos look unchanged even after 3 steps; the synthetic gradient PNG, at the random start's noise within
        # medium's bound, is held to that bound (below), not to a photo's SSIM.
        assert r["ssim"] > 0.9 or rel == "alpha.png"
        assert r["linf"] >= 1 and 0 < r["mean_abs_change"] < r["linf"]
        assert r["similarity"] < 0.99  # the descriptor of the written file really moved
        assert isinstance(r["steps"], int) and 0 <= r["steps"] <= 3 and r["seconds"] > 0
    # PNG is lossless, so the measured change is the budget; JPEG adds its own re-encoding error.
    assert records[batch["in"] / "alpha.png"]["linf"] <= eps_levels
    for name, reason in BAD.items():
        r = records[batch["in"] / name]
        assert r["status"] == "failed" and r["output"] is None and r["ssim"] is None
        assert name in r["error"] and reason in r["error"]


def test_existing_outputs_skipped_then_overwritten(batch, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(batch["out"], out)
    old = 1_000_000_000 * 10**9  # a recognisable mtime (2001)
    for p in out.rglob("*"):
        os.utime(p, ns=(old, old))
    hashes = _hashes(out)
    code, _, stderr = _run(["protect", str(batch["in"]), "-o", str(out), "--recursive", *FAST])
    assert code == 1  # the broken inputs still fail
    assert "protected 0, skipped 3 existing" in stderr
    assert _hashes(out) == hashes and all(p.stat().st_mtime_ns == old for p in out.rglob("*") if p.is_file())

    code, _, stderr = _run(["protect", str(batch["in"] / "alpha.png"), str(batch["in"] / "a.jpg"),
                            "-o", str(out), "--overwrite", *FAST])
    assert code == 0, stderr
    assert "protected 2, skipped 0" in stderr
    assert (out / "alpha.png").stat().st_mtime_ns != old and (out / "a.jpg").stat().st_mtime_ns != old
    assert (out / "sub" / "b.jpg").stat().st_mtime_ns == old
    assert _files(out) == set(GOOD)


# ------------------------------------------------------------------------------ formats and paths


def test_format_png_turns_jpeg_into_png(ukbench_dir, tmp_path):
    shutil.copy(ukbench_dir / "ukbench00001.jpg", tmp_path / "x.jpg")
    out = tmp_path / "out"
    code, _, stderr = _run(["protect", str(tmp_path / "x.jpg"), "-o", str(out), "--format", "png", *FAST])
    assert code == 0, stderr
    assert _files(out) == {"x.png"}
    with Image.open(out / "x.png") as img:
        assert img.format == "PNG"
    change = np.abs(read_photo(out / "x.png").rgb.astype(int) - read_photo(tmp_path / "x.jpg").rgb.astype(int))
    assert 1 <= change.max() <= STRENGTHS["medium"].budget_levels()  # lossless output: exactly within the budget


@pytest.mark.parametrize("method", [["--method", "ssim-pire", "--steps", "3"], ["--method", "noise"]])
def test_black_and_white_photo_comes_back_grey(ukbench_dir, tmp_path, method):
    Image.open(ukbench_dir / "ukbench00001.jpg").convert("L").save(tmp_path / "bw.jpg", quality=95)
    out = tmp_path / "out"
    code, _, stderr = _run(["protect", str(tmp_path / "bw.jpg"), "-o", str(out), *method, "--size", "96",
                            "--seed", "0"])
    assert code == 0, stderr
    with Image.open(out / "bw.jpg") as img:
        assert img.mode == "L"  # a grey file, as the input: no colour drawn in
    assert read_photo(out / "bw.jpg").rgb.astype(int).std() > 0
    assert not np.array_equal(read_photo(out / "bw.jpg").rgb, read_photo(tmp_path / "bw.jpg").rgb)


def test_output_that_would_overwrite_the_input_fails(tmp_path):
    Image.fromarray(_smooth(48, 64)).save(tmp_path / "x.png")
    before = _hashes(tmp_path)
    code, _, stderr = _run(["protect", str(tmp_path), "-o", str(tmp_path), *FAST])
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("advquery: error:")]
    assert len(errors) == 1 and "x.png" in errors[0] and "overwrite the input" in errors[0]
    assert _hashes(tmp_path) == before and "Traceback" not in stderr


def test_output_that_would_replace_another_input_fails(tmp_path):
    """x.tif becomes x.png by default: with -o the input folder it must not replace the input x.png,
    not even with --overwrite."""
    Image.fromarray(_smooth(48, 64, seed=1)).save(tmp_path / "x.tif")
    Image.fromarray(_smooth(48, 64, seed=2)).save(tmp_path / "x.png")
    before = _hashes(tmp_path)
    code, _, stderr = _run(["protect", str(tmp_path), "-o", str(tmp_path), "--overwrite", *FAST])
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("advquery: error:")]
    assert len(errors) == 2 and all("overwrite the input" in line for line in errors), errors
    assert any(f"{tmp_path / 'x.tif'}: " in line and str(tmp_path / "x.png") in line for line in errors)
    assert _hashes(tmp_path) == before


def test_glob_input(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        Image.fromarray(_smooth(48, 64, seed=i)).save(inp / f"p{i}.jpg", quality=95)
    Image.fromarray(_smooth(48, 64)).save(inp / "q.png")
    out = tmp_path / "out"
    code, _, stderr = _run(["protect", str(inp / "*.jpg"), "-o", str(out), *FAST])
    assert code == 0, stderr
    assert _files(out) == {"p0.jpg", "p1.jpg"}


# ------------------------------------------------------------------------------ metadata and orientation


def test_metadata_dropped_by_default_kept_without_gps_on_request_colour_profile_kept(tmp_path):
    from PIL import ImageCms
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "cam.jpg"
    Image.fromarray(_smooth(64, 96)).save(src, quality=95, exif=exif_with_gps(1), icc_profile=profile)
    with Image.open(src) as img:
        assert img.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the input really carries GPS
    code, _, stderr = _run(["protect", str(src), "-o", str(tmp_path / "plain"), *FAST])
    assert code == 0, stderr
    with Image.open(tmp_path / "plain" / "cam.jpg") as img:
        assert "exif" not in img.info and len(img.getexif()) == 0
        assert img.info.get("icc_profile") == profile  # how to show the pixels: kept, so the colours look the same

    code, _, stderr = _run(["protect", str(src), "-o", str(tmp_path / "kept"), "--keep-metadata", *FAST])
    assert code == 0, stderr
    with Image.open(tmp_path / "kept" / "cam.jpg") as img:
        exif = img.getexif()
        assert exif.get(ExifTags.Base.Make) == "TestCam"
        assert ExifTags.IFD.GPSInfo not in exif and not exif.get_ifd(ExifTags.IFD.GPSInfo)


def test_exif_orientation_applied(tmp_path):
    raw = _smooth(64, 96)  # stored H 64, W 96
    raw[:16, :16] = [255, 0, 0]  # marker at the stored top-left corner
    src = tmp_path / "rot.jpg"
    Image.fromarray(raw).save(src, quality=95, exif=exif_with_gps(6))
    code, _, stderr = _run(["protect", str(src), "-o", str(tmp_path / "out"), *FAST])
    assert code == 0, stderr
    with Image.open(tmp_path / "out" / "rot.jpg") as img:
        assert img.size == (64, 96)  # W, H swapped: upright
        assert img.getexif().get(ExifTags.Base.Orientation) is None  # no tag left to rotate it again
        upright = np.asarray(img.convert("RGB")).astype(int)
    assert upright[4:12, -12:-4, 0].mean() > 200 and upright[4:12, -12:-4, 1].mean() < 60  # rotated clockwise
    assert upright[4:12, 4:12, 1].mean() > 60  # the top-left now holds other content


# ------------------------------------------------------------------------------ argument errors


@pytest.mark.parametrize("option, value", [("--eps", "0"), ("--eps", "-1"), ("--quality", "0"), ("--quality", "101")])
def test_bad_budget_or_quality_is_one_line_exit_2(tmp_path, option, value):
    Image.fromarray(_smooth(48, 64)).save(tmp_path / "x.png")
    code, stdout, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), option, value,
                                 *FAST])
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and option in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_two_inputs_with_the_same_output_second_fails(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_smooth(64, 80, seed=1)).save(src / "x.png")
    Image.fromarray(_smooth(64, 80, seed=2)).save(src / "x.tif")
    code, _, err = _run(["protect", str(src), "-o", str(out), *FAST])
    assert code == 1
    assert "same output" in err and "x.tif" in err
    assert _files(out) == {"x.png"}
    # The output is the protected x.png, not x.tif's.
    assert np.abs(read_photo(out / "x.png").rgb.astype(int) - read_photo(src / "x.png").rgb.astype(int)).max() <= STRENGTHS["medium"].budget_levels()


# ------------------------------------------------------------------------------ budget maps


@pytest.mark.parametrize("method", ["cv-pire", "pire"])
def test_save_map_writes_the_budget_map_at_working_resolution(tmp_path, method):
    """Left half flat grey, right half random texture: CV-PIRE's map is dark on the left, PIRE's constant."""
    rgb = np.full((64, 128, 3), 128, np.uint8)
    rgb[:, 64:] = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(out), "--method", method, "--save-map",
                            "--report", str(report), *FAST])
    assert code == 0, stderr
    assert _files(out) == {"x.png", "maps/x.png"}
    assert _strict_json(report.read_text())["map"] == str(out / "maps" / "x.png")
    with Image.open(out / "maps" / "x.png") as img:
        assert img.mode == "L" and img.size == (96, 48)  # the working resolution (long side --size 96)
        grey = np.asarray(img)
    if method == "pire":
        assert (grey == 255).all()
    else:
        assert grey.min() == 0 and grey.max() == 255
        assert grey[:, :40].max() <= 1 and grey[:, 56:].mean() > 50


# ------------------------------------------------------------------------------ model-free methods

KEYPOINT_KEYS = {"keypoints_before", "keypoints_removed", "keypoints_injected"}


def _model_free(tmp_path, *options: str) -> tuple[int, str, str, dict]:
    """Protect a small picture with blobs (PNG) with ``options``; exit code, stdout, stderr and the report line."""
    Image.fromarray(blob_scene(96, 128)).save(tmp_path / "x.png")
    report = tmp_path / "report.jsonl"
    code, stdout, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--size", "64",
                                 "--report", str(report), *options])
    return code, stdout, stderr, _strict_json(report.read_text()) if report.exists() else {}


def test_keypoint_method_reports_keypoints_removed_and_injected(tmp_path):
    code, stdout, stderr, r = _model_free(tmp_path, "--method", "rmd")
    assert code == 0, stderr
    assert REPORT_KEYS | KEYPOINT_KEYS <= set(r) and r["status"] == "protected" and r["steps"] is None
    assert r["precision"] is None  # no network passes    assert r["keypoints_before"] >= 10 and r["keypoints_removed"] >= 0.8 * r["keypoints_before"]
    assert isinstance(r["keypoints_injected"], int) and r["keypoints_injected"] >= 0
    assert 0.5 < r["ssim"] < 1 and r["linf"] >= 1 and -1 <= r["similarity"] < 1
    assert stdout.splitlines()[1].split()[6] == "-"  # no steps in the summary table


def test_noise_method_matches_the_target_ssim(tmp_path):
    code, _, stderr, r = _model_free(tmp_path, "--method", "noise", "--target-ssim", "0.95", "--seed", "0")
    assert code == 0, stderr
    assert abs(r["ssim"] - 0.95) <= 0.002  # lossless PNG: the written file has the matched SSIM
    assert r["steps"] is None and all(r[k] is None for k in KEYPOINT_KEYS) and -1 <= r["similarity"] < 1


@pytest.mark.parametrize("options, message", [
    (["--method", "pire", "--target-ssim", "0.95"], "--target-ssim applies to the noise method only, not to pire"),
    (["--method", "noise", "--target-ssim", "1.5"],
     "argument --target-ssim: expected a number in (0, 1), got '1.5' (see advquery protect --help)"),
    (["--method", "rmd", "--steps", "3"], "--eps and --steps apply to ssim-pire, pire, masked-pire, cv-pire, sd-pire only, not to rmd"),
    (["--method", "pire", "--ssim-weight", "10"], "--ssim-weight applies to ssim-pire only, not to pire"),
    (["--method", "ssim-pire", "--ssim-weight", "0"], "--ssim-weight must be positive (0 is pire), got 0.0"),
])
def test_model_free_option_errors_are_one_line_exit_2(tmp_path, options, message):
    code, _, stderr, _ = _model_free(tmp_path, *options)
    assert code == 2 and stderr.strip() == f"advquery: error: {message}"
    assert not (tmp_path / "out").exists()


def test_ssim_weight_trades_effect_for_ssim(tmp_path):
    """A higher SSIM price gives an output closer to the original (lossless PNG: the report measures the file)."""
    ssim = {}
    for weight in ("1", "3000"):
        (tmp_path / weight).mkdir()
        code, _, stderr, r = _model_free(tmp_path / weight, "--strength", "low", "--steps", "4", "--seed", "0",
                                         "--ssim-weight", weight)
        assert code == 0, stderr
        ssim[weight] = r["ssim"]
    assert 1 - ssim["3000"] < 0.7 * (1 - ssim["1"])


def test_save_map_refused_for_a_method_without_budget(tmp_path):
    Image.fromarray(_smooth(48, 64)).save(tmp_path / "x.png")
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--method", "noise",
                            "--save-map", "--size", "96"])
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "--save-map" in stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ reruns, reports, output folder


QUICK = [*FAST, "--method", "cv-pire"]  # no tracker views: quick


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("advquery: error:")]


def test_output_folder_inside_the_input_folder_is_not_taken_as_input(tmp_path):
    """protect photos -o photos/protected --recursive, twice: the rerun resumes, it does not protect its
    own outputs into photos/protected/protected."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.fromarray(_smooth(48, 64, seed=1)).save(photos / "x.png")
    Image.fromarray(_smooth(48, 64, seed=2)).save(photos / "sub" / "y.png")
    out = photos / "protected"
    for _ in range(2):
        code, _, stderr = _run(["protect", str(photos), "-o", str(out), "--recursive", *QUICK])
        assert code == 0 and not _error_lines(stderr), stderr
    assert "protected 0, skipped 2 existing" in stderr
    assert _files(out) == {"x.png", "sub/y.png"}


def test_outputs_of_an_earlier_run_inside_the_input_folder_are_not_inputs(tmp_path):
    """protect photos -o photos/protected, then -o photos/prot2 --recursive: the second run protects the photos
    once, not the first run's outputs into photos/prot2/protected, and the first run's folder is untouched."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.fromarray(_smooth(48, 64, seed=1)).save(photos / "x.png")
    Image.fromarray(_smooth(48, 64, seed=2)).save(photos / "sub" / "y.png")
    code, _, stderr = _run(["protect", str(photos), "-o", str(photos / "protected"), "--recursive", *QUICK])
    assert code == 0, stderr
    earlier = _hashes(photos / "protected")
    code, _, stderr = _run(["protect", str(photos), "-o", str(photos / "prot2"), "--recursive", *QUICK])
    assert code == 0 and not _error_lines(stderr) and "protected 2, skipped 0" in stderr, stderr
    assert _files(photos / "prot2") == {"x.png", "sub/y.png"}
    assert _hashes(photos / "protected") == earlier


def test_photo_that_runs_out_of_memory_is_a_failed_line_and_the_batch_goes_on(tmp_path, monkeypatch):
    """A photo whose protection cannot allocate its memory (torch's CPU allocator, numpy) is one failed line; the
    other photos are protected and the exit code is 1."""
    import advquery.cli.protect as protect_cli
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(_smooth(48, 64, seed=len(name) + ord(name[0]))).save(tmp_path / name)
    real = protect_cli.protect_photo
    failures = {"a.png": RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                                      "allocate memory: you tried to allocate 40000000000000 bytes."),
                "b.png": MemoryError("Unable to allocate 72.8 TiB for an array")}

    def protect_photo(photo, target, *args, **kwargs):
        if photo.path.name in failures:
            raise failures[photo.path.name]
        return real(photo, target, *args, **kwargs)

    monkeypatch.setattr(protect_cli, "protect_photo", protect_photo)
    out, report = tmp_path / "out", tmp_path / "r.jsonl"
    code, _, stderr = _run(["protect", *(str(tmp_path / n) for n in ("a.png", "b.png", "c.png")), "-o", str(out),
                            "--report", str(report), *QUICK])
    assert code == 1 and "Traceback" not in stderr, stderr
    assert _error_lines(stderr) == [f"advquery: error: {tmp_path / n}: out of memory (" + said + "); a smaller --size "
                                    "needs less" for n, said in (("a.png", "can't allocate memory: you tried to allocate "
                                                                  "40000000000000 bytes."),
                                                                 ("b.png", "Unable to allocate 72.8 TiB for an array"))]
    assert _files(out) == {"c.png"} and "protected 1, skipped 0 existing (use --overwrite), failed 2" in stderr
    assert [json.loads(line)["status"] for line in report.read_text().splitlines()] == ["failed", "failed", "protected"]


def test_report_that_cannot_be_opened_is_refused_before_any_work(tmp_path):
    Image.fromarray(_smooth(48, 64)).save(tmp_path / "x.png")
    (tmp_path / "report.jsonl").mkdir()
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"),
                            "--report", str(tmp_path / "report.jsonl"), *QUICK])
    assert code == 2 and stderr.strip() == f"advquery: error: --report {tmp_path / 'report.jsonl'}: is a folder, not a file"
    assert not (tmp_path / "out").exists()


def test_report_write_error_is_one_line_and_the_batch_goes_on(tmp_path):
    """/dev/full: every write fails with 'No space left on device', as on a full disk."""
    for i in range(2):
        Image.fromarray(_smooth(48, 64, seed=i)).save(tmp_path / f"x{i}.png")
    code, stdout, stderr = _run(["protect", str(tmp_path / "x0.png"), str(tmp_path / "x1.png"), "-o",
                                 str(tmp_path / "out"), "--report", "/dev/full", *QUICK])
    assert code == 1 and "Traceback" not in stderr
    assert _error_lines(stderr) == ["advquery: error: --report /dev/full: cannot write (No space left on device); "
                                    "the report stops here"]
    assert _files(tmp_path / "out") == {"x0.png", "x1.png"} and "protected 2, skipped 0" in stderr
    assert "x0.png" in stdout and "x1.png" in stdout  # the summary is kept


def test_report_lines_record_input_and_settings(tmp_path):
    Image.fromarray(_smooth(48, 64)).save(tmp_path / "x.png")
    report = tmp_path / "r.jsonl"
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--report", str(report),
                            *QUICK])
    assert code == 0, stderr
    line = _strict_json(report.read_text())
    assert line["input"] == str(tmp_path / "x.png") and line["output"] == str(tmp_path / "out" / "x.png")
    assert line["settings"] == {"model": "efficientnet-lite0-gem", "method": "cv-pire", "strength": "medium", "eps": None,
                                "ssim_weight": None, "steps": 3, "target_ssim": None, "size": 96,
                                "precision": None, "format": None, "quality": 95, "keep_metadata": False, "seed": 0, "save_map": False}


def test_existing_output_of_another_input_is_not_taken_for_this_ones(tmp_path):
    """b.png made out/b.png; b.bmp, another photo, must not be 'skipped' because out/b.png exists, nor must
    b.png once it was edited."""
    out = tmp_path / "out"
    Image.fromarray(_smooth(48, 64, seed=1)).save(tmp_path / "b.png")
    code, _, stderr = _run(["protect", str(tmp_path / "b.png"), "-o", str(out), *QUICK])
    assert code == 0, stderr
    made = _hashes(out)
    Image.fromarray(_smooth(48, 64, seed=2)).save(tmp_path / "b.bmp")
    code, _, stderr = _run(["protect", str(tmp_path / "b.bmp"), "-o", str(out), *QUICK])
    assert code == 1 and _error_lines(stderr) == [
        f"advquery: error: {tmp_path / 'b.bmp'}: output {out / 'b.png'} exists, made from {tmp_path / 'b.png'}; "
        "use --overwrite to replace it, or another -o folder"]
    Image.fromarray(_smooth(48, 64, seed=3)).save(tmp_path / "b.png")  # the photo was edited since
    code, _, stderr = _run(["protect", str(tmp_path / "b.png"), "-o", str(out), *QUICK])
    assert code == 1 and "made from an earlier version of this file" in stderr
    assert _hashes(out) == made
    code, _, stderr = _run(["protect", str(tmp_path / "b.png"), "-o", str(out), "--overwrite", *QUICK])
    assert code == 0 and "protected 1" in stderr


def test_unfinished_output_is_made_again_and_a_file_advquery_did_not_make_is_kept(tmp_path):
    """A pending record is made before its output: an output whose record is still pending (its run killed between
    writing and recording it) or damaged is made again, even though it exists. A file at an output's path without
    any record, in a folder that keeps records, is not advquery's (a user's own): it is kept unless --overwrite.
    In a folder without records (an older advquery's) an output is taken as it is."""
    for name, seed in (("x", 1), ("y", 2), ("z", 4)):
        Image.fromarray(_smooth(48, 64, seed=seed)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(out), *QUICK])
    assert code == 0, stderr
    Image.fromarray(_smooth(48, 64, seed=3)).save(out / "y.png")  # the user's own file
    users = (out / "y.png").read_bytes()
    (record,) = (out / OUTPUT_RECORDS).glob("*.json")
    record.write_text("[" * 100_000)  # damaged (nested too deeply to parse)
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "-o", str(out), *QUICK])
    assert code == 1 and "protected 1, skipped 0" in stderr and "Traceback" not in stderr, stderr
    assert _error_lines(stderr) == [f"advquery: error: {tmp_path / 'y.png'}: output {out / 'y.png'} exists and "
                                    "advquery did not make it (it has no record); use --overwrite to replace it, or "
                                    "another -o folder"]
    assert (out / "y.png").read_bytes() == users and len(list((out / OUTPUT_RECORDS).glob("*.json"))) == 1
    OutputRecords(out).begin(out / "z.png", tmp_path / "z.png")  # as a run killed after writing z.png leaves it
    Image.fromarray(_smooth(48, 64, seed=5)).save(out / "z.png")
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), str(tmp_path / "z.png"), "-o", str(out), *QUICK])
    assert code == 0 and "protected 1, skipped 1" in stderr, stderr
    assert not np.array_equal(read_photo(out / "z.png").rgb, _smooth(48, 64, seed=5))
    code, _, stderr = _run(["protect", str(tmp_path / "y.png"), "-o", str(out), "--overwrite", *QUICK])
    assert code == 0 and "protected 1" in stderr and (out / "y.png").read_bytes() != users
    records = OutputRecords(out)
    assert len(list((out / OUTPUT_RECORDS).glob("*.json"))) == 3
    assert all(records.existing(out / f"{name}.png", tmp_path / f"{name}.png") == "same" for name in "xyz")
    old = tmp_path / "old"  # an older advquery's folder: outputs and no records
    old.mkdir()
    Image.fromarray(_smooth(48, 64, seed=3)).save(old / "x.png")
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(old), *QUICK])
    assert code == 0 and "protected 0, skipped 1" in stderr, stderr


def test_older_folder_stays_without_records_when_a_new_photo_is_added(tmp_path):
    """Whether a folder keeps records is decided once, before any photo: in an older advquery's folder (outputs, no
    records) the first new output must not turn the old outputs checked after it into unrecorded ones."""
    photos, old = tmp_path / "photos", tmp_path / "old"
    photos.mkdir()
    old.mkdir()
    Image.fromarray(_smooth(48, 64, seed=1)).save(photos / "a.png")  # new: protected first
    Image.fromarray(_smooth(48, 64, seed=2)).save(photos / "b.png")
    Image.fromarray(_smooth(48, 64, seed=3)).save(old / "b.png")  # what an older advquery made of b.png
    before = (old / "b.png").read_bytes()
    for run in range(2):  # and so on every later run
        code, _, stderr = _run(["protect", str(photos), "-o", str(old), *QUICK])
        assert code == 0 and f"protected {1 - run}, skipped {1 + run}" in stderr, stderr
        assert (old / "b.png").read_bytes() == before and (old / "a.png").is_file()
    assert not (old / OUTPUT_RECORDS).exists()  # records would make the old output an unrecorded one


def test_outputs_stay_inside_the_output_folder(tmp_path, monkeypatch):
    (tmp_path / "work" / "a").mkdir(parents=True)
    (tmp_path / "victim").mkdir()
    Image.fromarray(_smooth(48, 64)).save(tmp_path / "victim" / "x.png")
    victim = _hashes(tmp_path / "victim")
    monkeypatch.chdir(tmp_path / "work")
    code, _, stderr = _run(["protect", "*/../../victim/*.png", "-o", "out", *QUICK])
    assert code == 0, stderr
    assert _files(tmp_path / "work" / "out") == {"victim/x.png"} and _hashes(tmp_path / "victim") == victim
    # A symbolic link inside OUTDIR that leads out of it is not followed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "work" / "out2").mkdir()
    (tmp_path / "work" / "out2" / "victim").symlink_to(elsewhere)
    code, _, stderr = _run(["protect", "*/../../victim/*.png", "-o", "out2", *QUICK])
    assert code == 1 and len(_error_lines(stderr)) == 1 and "would lie outside out2" in stderr
    assert list(elsewhere.iterdir()) == []


def test_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path):
    Image.fromarray(_smooth(48, 64)).save(tmp_path / "x.png")
    (tmp_path / "out").write_text("a file")
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), *QUICK])
    assert code == 2 and stderr.strip() == f"advquery: error: -o {tmp_path / 'out'}: this is a file, not a folder"
    code, _, stderr = _run(["protect", str(tmp_path / "x.png"), "-o", str(tmp_path / "out" / "sub"), *QUICK])
    assert code == 2 and stderr.strip() == (f"advquery: error: -o {tmp_path / 'out' / 'sub'}: {tmp_path / 'out'} "
                                            "is a file, not a folder")


def test_same_output_hint_does_not_suggest_format_when_it_was_given(tmp_path):
    Image.fromarray(_smooth(48, 64, seed=1)).save(tmp_path / "x.png")
    Image.fromarray(_smooth(48, 64, seed=2)).save(tmp_path / "x.tif")
    code, _, stderr = _run(["protect", str(tmp_path), "-o", str(tmp_path / "out"), "--format", "png", *QUICK])
    assert code == 1
    assert [line.rsplit(";", 1)[1] for line in _error_lines(stderr)] == [" rename one"]
