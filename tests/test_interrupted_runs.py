"""``advquery protect`` batches killed at random points and rerun, and two batches on the same folder at once.

Real UKBench photos (at a quarter of their size), real processes and signals (SIGINT, SIGTERM, SIGKILL),
a tiny working size.
Afterwards every output must be complete and valid, made once, with no temporary or claim file left,
and every report line about a protected photo must describe the file on disk.
"""
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advquery.io import OUTPUT_RECORDS, read_photo, write_photo_atomic
from advquery.outputs import OutputRecords
from advquery.quality import quality_report
from helpers import leftovers

N_PHOTOS = 8


@pytest.fixture()
def photos(ukbench_dir, tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(N_PHOTOS):
        rgb = read_photo(ukbench_dir / f"ukbench{4 * i:05d}.jpg").rgb[::4, ::4].copy()  # 160 x 120
        write_photo_atomic(folder / f"p{i}.jpg", rgb, quality=95)
    return folder


def _protect(photos: Path, out: Path, report: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "advquery.cli.main", "protect", str(photos), "-o", str(out),
                             "--report", str(report), "--size", "32", "--steps", "3", "--seed", "0", "--method", "cv-pire"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records_match(photos: Path, out: Path) -> None:
    """Every output has a record, made from its input as it is now; no record without its output."""
    records = OutputRecords(out)
    for name in _outputs(out):
        assert records.existing(out / name, photos / name) == "same", name
    assert len(list((out / OUTPUT_RECORDS).glob("*.json"))) == len(_outputs(out))


def _outputs(out: Path) -> set[str]:
    return {p.name for p in out.glob("*.jpg")} if out.is_dir() else set()


def _check_outputs_and_report(photos: Path, out: Path, report: Path) -> list[dict]:
    """Every output is a whole photo of its input's size; every 'protected' line measures the file on disk."""
    for name in _outputs(out):
        assert read_photo(out / name).size == read_photo(photos / name).size
    lines = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    for line in lines:
        if line["status"] == "protected":
            measured = quality_report(read_photo(line["input"]).rgb, read_photo(line["output"]).rgb)
            assert measured["ssim"] == pytest.approx(line["ssim"], abs=1e-9), line
    return lines


def test_batch_killed_at_random_points_then_rerun_ends_complete(photos, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    rng = random.Random()
    kills = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        done_before = len(_outputs(out))
        process = _protect(photos, out, report)
        deadline = time.monotonic() + 120
        while len(_outputs(out)) == done_before and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # into the batch: a photo has been written
        delay = rng.uniform(0, 0.3)
        time.sleep(delay)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
        kills.append((sig.name, round(delay, 3), process.returncode, len(_outputs(out))))
        assert "Traceback" not in stderr, (kills, stderr)
        # The batch summary printed without an interrupt: the signal came after the work, while the interpreter
        # exited with the default handler back in place, so the process may end killed by it.
        finished = "interrupted" not in stderr and "failed 0" in stderr
        if process.returncode != 0:
            expected = {-9} if sig == signal.SIGKILL else {128 + sig} | ({-sig} if finished else set())
            assert process.returncode in expected, (kills, stderr)
        if sig != signal.SIGKILL:  # handled: it cleaned up and said so
            assert leftovers(tmp_path) == [], kills
            assert process.returncode == 0 or finished or "interrupted after" in stderr, (kills, stderr)
        _check_outputs_and_report(photos, out, report)
    # What a killed process can leave (its PID no longer runs), planted for certain:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (out / f".p0.jpg.advquery-{dead}-abcd1234.tmp").write_bytes(b"half a photo")
    (out / ".p1.jpg.advquery-claim").write_bytes(b"")
    process = _protect(photos, out, report)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, (kills, stderr)
    assert _outputs(out) == {f"p{i}.jpg" for i in range(N_PHOTOS)}  # one output per photo, none extra
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_RECORDS.parts[0], *sorted(_outputs(out))]
    assert leftovers(tmp_path) == []
    lines = _check_outputs_and_report(photos, out, report)
    protected = [Path(line["input"]).name for line in lines if line["status"] == "protected"]
    assert len(protected) == len(set(protected)), (kills, protected)  # none protected twice
    assert "failed 0" in stderr
    _records_match(photos, out)


# A protect run killed (SIGKILL) right after its first output is written, before it is recorded.
KILLED_BEFORE_RECORDING = """
import os, signal, sys
from advquery.cli.main import main
from advquery.outputs import OutputRecords
OutputRecords.write = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
sys.exit(main(sys.argv[1:]))
"""


def test_output_written_but_not_recorded_when_killed_is_made_again(photos, tmp_path):
    """The window between writing an output and recording which input made it: a rerun must not take the
    unrecorded output for finished, least of all after its input changed."""
    out = tmp_path / "out"
    argv = [str(photos / "p0.jpg"), "-o", str(out), "--size", "32", "--steps", "3", "--seed", "0", "--method", "cv-pire"]
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RECORDING, "protect", *argv], capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _outputs(out) == {"p0.jpg"} and OutputRecords(out).existing(out / "p0.jpg", photos / "p0.jpg") == "unfinished"  # written, record pending
    unrecorded = (out / "p0.jpg").read_bytes()
    write_photo_atomic(photos / "p0.jpg", read_photo(photos / "p1.jpg").rgb, quality=95)  # the input changes
    report = tmp_path / "report.jsonl"
    rerun = subprocess.run([sys.executable, "-m", "advquery.cli.main", "protect", *argv, "--report", str(report)],
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and "protected 1, skipped 0" in rerun.stderr, rerun.stderr
    assert (out / "p0.jpg").read_bytes() != unrecorded
    assert _check_outputs_and_report(photos, out, report)[0]["status"] == "protected"
    _records_match(photos, out)


def test_two_batches_on_the_same_folder_protect_each_photo_once(photos, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    first, second = _protect(photos, out, report), _protect(photos, out, report)
    results = [p.communicate(timeout=300) for p in (first, second)]
    for process, (_, stderr) in zip((first, second), results):
        assert process.returncode == 0 and "Traceback" not in stderr, stderr
    lines = _check_outputs_and_report(photos, out, report)
    assert len(lines) == 2 * N_PHOTOS  # each batch reports every photo
    by_photo = {}
    for line in lines:
        by_photo.setdefault(Path(line["input"]).name, []).append(line["status"])
    assert all(sorted(s) == ["protected", "skipped"] for s in by_photo.values()), by_photo  # protected once
    done = [int(re.search(r"protected (\d+),", stderr).group(1)) for _, stderr in results]
    assert sum(done) == N_PHOTOS, [stderr for _, stderr in results]
    assert _outputs(out) == {f"p{i}.jpg" for i in range(N_PHOTOS)} and leftovers(tmp_path) == []
