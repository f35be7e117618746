"""``advquery verify`` on a photo protected by ``advquery protect``, with and without an index."""
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from advquery.cli.main import main

SIZE = "96"


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(ukbench_dir, tmp_path_factory):
    """Six UKBench photos, photo 0 protected (its report line kept), and an index of the six at 96 px."""
    root = tmp_path_factory.mktemp("verify")
    photos = root / "photos"
    photos.mkdir()
    for p in sorted(ukbench_dir.glob("*.jpg"))[:6]:
        shutil.copy(p, photos / p.name)
    original = photos / "ukbench00000.jpg"
    code, _, stderr = _run(["protect", str(original), "-o", str(root / "prot"), "--report", str(root / "r.jsonl"),
                            "--size", SIZE, "--steps", "3", "--seed", "0"])
    assert code == 0, stderr
    code, _, stderr = _run(["index", "build", str(photos), "-o", str(root / "idx"), "--size", SIZE])
    assert code == 0, stderr
    return {"original": original, "protected": root / "prot" / original.name, "index": root / "idx",
            "report": json.loads((root / "r.jsonl").read_text())}


def _verify(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["verify", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verify_protected_json(setup, capsys):
    code, out, err = _verify(capsys, str(setup["original"]), str(setup["protected"]), "--size", SIZE, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["original"] == str(setup["original"]) and result["protected"] == str(setup["protected"])
    assert result["model"] == "efficientnet-lite0-gem" and result["size"] == 96
    assert result["similarity"] < 0.99
    # The same measurement as protect's own report, computed by another code path (extraction, not the attack).
    assert result["similarity"] == pytest.approx(setup["report"]["similarity"], abs=1e-4)
    quality = result["quality"]
    assert 0.9 < quality["ssim"] < 1 and quality["ssim"] == pytest.approx(setup["report"]["ssim"], abs=1e-9)
    assert quality["linf"] >= 1 and quality["psnr"] > 30
    assert "overlap_at_k" not in result


def test_verify_original_against_itself(setup, capsys):
    code, out, err = _verify(capsys, str(setup["original"]), str(setup["original"]), "--size", SIZE, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["similarity"] > 0.9999
    assert result["quality"]["ssim"] == pytest.approx(1.0) and result["quality"]["linf"] == 0
    assert result["quality"]["psnr"] is None  # infinite PSNR is not valid JSON


def test_verify_with_index_json(setup, capsys):
    code, out, err = _verify(capsys, str(setup["original"]), str(setup["protected"]), "--index",
                             str(setup["index"]), "-k", "3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["k"] == 3 and result["size"] == 96  # size taken from the index
    found_o, found_p = result["original_neighbours"], result["protected_neighbours"]
    assert len(found_o) == len(found_p) == 3
    assert Path(found_o[0]) == setup["original"].resolve()  # an indexed photo finds itself first
    assert 0 <= result["overlap_at_k"] <= 1
    assert result["overlap_at_k"] == pytest.approx(len(set(found_o) & set(found_p)) / 3)


def test_verify_text_output(setup, capsys):
    code, out, err = _verify(capsys, str(setup["original"]), str(setup["protected"]), "--index",
                             str(setup["index"]), "-k", "2")
    assert code == 0, err
    assert "descriptor similarity (efficientnet-lite0-gem, 96 px)" in out
    assert "SSIM" in out and "overlap@2" in out


def test_verify_with_index_of_another_size_refused(setup, capsys):
    code, out, err = _verify(capsys, str(setup["original"]), str(setup["protected"]), "--index",
                             str(setup["index"]), "--size", "128", "--json")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "size" in err and "Traceback" not in err


def test_verify_missing_file_one_line(setup, tmp_path, capsys):
    code, _, err = _verify(capsys, str(setup["original"]), str(tmp_path / "nope.jpg"), "--size", SIZE)
    assert code == 2 and "nope.jpg" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_verify_photos_of_different_sizes_says_why_quality_is_not_measured(setup, tmp_path, capsys):
    from advquery.io import read_photo, write_photo_atomic
    half = read_photo(setup["protected"]).rgb[::2, ::2]
    write_photo_atomic(tmp_path / "half.png", half.copy())
    code, out, err = _verify(capsys, str(setup["original"]), str(tmp_path / "half.png"), "--size", SIZE)
    assert code == 0, err
    assert "image quality: not measured, the photos differ in size (640 x 480 and 320 x 240 pixels)" in out
    code, out, _ = _verify(capsys, str(setup["original"]), str(tmp_path / "half.png"), "--size", SIZE, "--json")
    result = json.loads(out)
    assert result["quality"] is None and "differ in size" in result["quality_not_measured"]


def _tracker_lines(capsys, original, protected) -> tuple[list[str], str]:
    """``verify --trackers quick``'s text: its row per tracker and its summary line."""
    from advquery.trackers import VERIFY_QUICK
    code, out, err = _verify(capsys, str(original), str(protected), "--size", SIZE, "--trackers", "quick")
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("trackers (quick)"))
    return lines[start + 1:start + 1 + len(VERIFY_QUICK)], lines[start + 1 + len(VERIFY_QUICK)].strip()


def test_verify_trackers_quick_json_and_text(setup, capsys):
    from advquery.trackers import VERDICTS, VERIFY_QUICK, Calibration
    code, out, err = _verify(capsys, str(setup["original"]), str(setup["protected"]), "--size", SIZE,
                             "--trackers", "quick", "--json")
    assert code == 0, err
    checks = json.loads(out)["trackers"]
    assert [c["tracker"] for c in checks] == [t.name for t in VERIFY_QUICK]
    assert all(-1 <= c["similarity"] <= 1 and c["verdict"] in VERDICTS for c in checks)
    calibration = Calibration.load()  # each verdict says whether the calibration's intervals leave it in doubt
    firm = [calibration.firm(t.system, c["similarity"]) for c, t in zip(checks, VERIFY_QUICK)]
    assert [c["firm"] for c in checks] == firm
    rows, summary = _tracker_lines(capsys, setup["original"], setup["protected"])
    assert [row.endswith("(near a threshold: could go either way)") for row in rows] == [not f for f in firm]
    near = firm.count(False)
    assert summary.endswith(f"; {near} near a threshold") if near else summary.endswith(" still found")
    rows, summary = _tracker_lines(capsys, setup["original"], setup["original"])
    assert all(row.strip().startswith(t.name) and row.endswith("still found") for row, t in zip(rows, VERIFY_QUICK))
    assert summary == f"0 blocked, 0 weakened, {len(VERIFY_QUICK)} still found"
