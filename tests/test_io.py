"""Tests for advquery.io: every bad-input reason, mode conversions, atomic writes, input expansion."""
import os
import pickle
import itertools
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, JpegImagePlugin

from advquery import io
from advquery.io import (
    IMAGE_EXTENSIONS, OUTPUT_RECORDS, ImageError, atomic_write, claim, collect_inputs, format_for_suffix,
    is_output_folder, printable, read_photo, remove_stale_temporaries, suffix_for_format, to_tensor, to_uint8,
    write_photo_atomic,
)
from helpers import exif_with_gps


def _rgb(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(img: Image.Image, path: Path, fmt=None, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


# ----------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str, dict]]:
    """name -> (file, expected reason fragment, read_photo kwargs)."""
    cases = {}
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases["zero-byte"] = (tmp_path / "empty.jpg", "empty file", {})
    (tmp_path / "notes.jpg").write_text("this is not a photo\n")
    cases["text"] = (tmp_path / "notes.jpg", "not an image", {})
    full = _save(Image.fromarray(_rgb(64, 64)), tmp_path / "full.jpg", quality=90)
    data = full.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "cut.jpg", "truncated or corrupt", {})
    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    cases["animated"] = (tmp_path / "anim.gif", "animated images are not supported", {})
    _save(Image.fromarray(_rgb(10, 10)), tmp_path / "tiny.png")
    cases["tiny"] = (tmp_path / "tiny.png", "too small", {})
    _save(Image.fromarray(_rgb(64, 64)), tmp_path / "bomb.png")
    cases["bomb"] = (tmp_path / "bomb.png", "too large", {"max_pixels": 64 * 64 - 1})
    cases["missing"] = (tmp_path / "missing.png", "no such file", {})
    cases["folder"] = (tmp_path, "is a folder", {})
    _save(Image.fromarray(np.zeros((40, 40), np.float32)), tmp_path / "float.tif")
    cases["float"] = (tmp_path / "float.tif", "unsupported colour mode F", {})
    return cases


@pytest.mark.parametrize("case", ["zero-byte", "text", "truncated", "animated", "tiny", "bomb",
                                  "missing", "folder", "float"])
def test_bad_input_gives_one_line_image_error(tmp_path, case):
    path, reason, kwargs = _bad_inputs(tmp_path)[case]
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=reason) as info:
        read_photo(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert path.name in message
    assert isinstance(info.value, ValueError)
    assert Image.MAX_IMAGE_PIXELS == before  # no global PIL state leaked


def test_image_error_pickles():
    err = pickle.loads(pickle.dumps(ImageError("a.jpg", "empty file")))
    assert str(err) == "a.jpg: empty file" and err.reason == "empty file"


def test_pixel_limit_is_inclusive(tmp_path):
    path = _save(Image.fromarray(_rgb(64, 64)), tmp_path / "ok.png")
    assert read_photo(path, max_pixels=64 * 64).size == (64, 64)
    assert read_photo(path, max_pixels=None).size == (64, 64)


# ----------------------------------------------------------------------------- modes


def test_rgb_png_exact(tmp_path):
    rgb = _rgb()
    photo = read_photo(_save(Image.fromarray(rgb), tmp_path / "a.png"))
    assert photo.format == "PNG" and photo.alpha is None and photo.size == (64, 48)
    np.testing.assert_array_equal(photo.rgb, rgb)


def test_cmyk_jpeg_to_rgb(tmp_path):
    path = _save(Image.new("CMYK", (40, 36), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    photo = read_photo(path)
    assert photo.rgb.shape == (36, 40, 3) and photo.rgb.dtype == np.uint8 and photo.format == "JPEG"
    r, g, b = photo.rgb.reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15  # 100 % magenta + yellow = red


def test_16bit_png_scaled_not_clipped(tmp_path):
    row = np.array([0, 257 * 100, 65535, 1000, 32896, 128], np.uint16)
    path = _save(Image.fromarray(np.tile(row, (40, 6))), tmp_path / "deep.png")
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    photo = read_photo(path)
    assert photo.rgb.shape == (40, 36, 3)
    np.testing.assert_array_equal(photo.rgb[0, :6, 0], [0, 100, 255, 4, 128, 0])
    np.testing.assert_array_equal(photo.rgb[..., 0], photo.rgb[..., 2])


def test_greyscale_and_bilevel_replicated(tmp_path):
    grey = _rgb()[..., 0]
    photo = read_photo(_save(Image.fromarray(grey), tmp_path / "grey.png"))
    assert photo.rgb.shape == (48, 64, 3) and photo.alpha is None
    for c in range(3):
        np.testing.assert_array_equal(photo.rgb[..., c], grey)
    bilevel = Image.fromarray(grey > 127).convert("1")
    photo = read_photo(_save(bilevel, tmp_path / "bw.png"))
    np.testing.assert_array_equal(photo.rgb[..., 1], np.where(grey > 127, 255, 0))


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (40, 32), 0)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    for x in range(20):
        img.putpixel((x, 3), 1)
    img.putpixel((39, 31), 2)
    photo = read_photo(_save(img, tmp_path / "pal.png", transparency=0))
    assert photo.rgb.shape == (32, 40, 3) and photo.alpha.shape == (32, 40)
    assert photo.alpha[3, :20].tolist() == [255] * 20 and photo.alpha[0, 0] == 0
    assert photo.rgb[3, 0].tolist() == [255, 0, 0] and photo.rgb[31, 39].tolist() == [0, 255, 0]
    assert int(photo.alpha.sum()) == 21 * 255


def test_rgba_and_la_alpha_kept_unchanged(tmp_path):
    rgba = _rgb(40, 50, seed=1)
    alpha = _rgb(40, 50, seed=2)[..., 0]
    photo = read_photo(_save(Image.fromarray(np.dstack([rgba, alpha])), tmp_path / "a.png"))
    np.testing.assert_array_equal(photo.rgb, rgba)
    np.testing.assert_array_equal(photo.alpha, alpha)
    la = Image.merge("LA", [Image.fromarray(rgba[..., 0]), Image.fromarray(alpha)])
    photo = read_photo(_save(la, tmp_path / "la.png"))
    np.testing.assert_array_equal(photo.alpha, alpha)
    np.testing.assert_array_equal(photo.rgb[..., 2], rgba[..., 0])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_6_rotates_and_metadata_is_cleaned(tmp_path, suffix):
    rgb = np.zeros((60, 40, 3), np.uint8)  # H 60, W 40
    rgb[:8, :8] = [255, 0, 0]  # marker at the stored top-left corner
    path = _save(Image.fromarray(rgb), tmp_path / f"rot{suffix}", exif=exif_with_gps(6))
    photo = read_photo(path)
    assert photo.size == (60, 40) and photo.rgb.shape == (40, 60, 3)
    assert photo.rgb[2, -3, 0] > 200 and photo.rgb[2, 2, 0] < 50  # 90 degrees clockwise: top-right
    kept = Image.Exif()
    kept.load(photo.exif)
    assert kept[ExifTags.Base.Orientation] == 1 and kept[ExifTags.Base.Make] == "TestCam"
    assert ExifTags.IFD.GPSInfo not in kept and not kept.get_ifd(ExifTags.IFD.GPSInfo)


def test_icc_profile_kept_only_for_rgb(tmp_path):
    from PIL import ImageCms
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = read_photo(_save(Image.fromarray(_rgb()), tmp_path / "icc.png", icc_profile=srgb))
    assert photo.icc_profile == srgb
    assert read_photo(_save(Image.fromarray(_rgb()), tmp_path / "no.png")).icc_profile is None


# ----------------------------------------------------------------------------- writing


def test_write_png_round_trip_exact_and_no_temp_files(tmp_path):
    rgb, alpha = _rgb(33, 47), _rgb(33, 47, seed=3)[..., 1]
    out = tmp_path / "sub" / "dir" / "out.png"
    assert write_photo_atomic(out, rgb, alpha) == out
    photo = read_photo(out)
    np.testing.assert_array_equal(photo.rgb, rgb)
    np.testing.assert_array_equal(photo.alpha, alpha)
    write_photo_atomic(out, rgb[::-1].copy())  # replaces, now opaque
    np.testing.assert_array_equal(read_photo(out).rgb, rgb[::-1])
    assert read_photo(out).alpha is None
    assert os.listdir(out.parent) == ["out.png"]


def test_write_jpeg_drops_alpha_444_and_keepsexif_with_gps(tmp_path):
    rgb = _rgb(40, 40)
    out = write_photo_atomic(tmp_path / "o.jpeg", rgb, alpha=rgb[..., 0], quality=95,
                             exif=exif_with_gps(1).tobytes())
    with Image.open(out) as img:
        assert img.format == "JPEG" and img.mode == "RGB"
        assert JpegImagePlugin.get_sampling(img) == 0  # 4:4:4
        assert img.getexif()[ExifTags.Base.Make] == "TestCam"
    write_photo_atomic(out, rgb, format="jpg", quality=75)
    with Image.open(out) as img:
        assert JpegImagePlugin.get_sampling(img) == 2  # 4:2:0 below quality 90


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tiff"])
def test_write_grey_pixels_as_a_grey_file(tmp_path, suffix):
    grey = np.repeat(_rgb(40, 56)[..., :1], 3, axis=2)
    out = write_photo_atomic(tmp_path / f"g{suffix}", grey)
    with Image.open(out) as img:
        assert img.mode == "L"
    back = read_photo(out).rgb
    assert (back[..., :1] == back[..., 1:]).all()
    if suffix in (".png", ".tiff"):
        np.testing.assert_array_equal(back, grey)
    alpha = _rgb(40, 56, seed=2)[..., 0]
    with Image.open(write_photo_atomic(tmp_path / "ga.png", grey, alpha)) as img:
        assert img.mode == "LA"
    np.testing.assert_array_equal(read_photo(tmp_path / "ga.png").alpha, alpha)
    with Image.open(write_photo_atomic(tmp_path / "ga.bmp", grey, alpha)) as img:
        assert img.mode.startswith("RGB")  # BMP stores no grey with alpha: written in colour, not refused
    almost = grey.copy()
    almost[0, 0, 2] ^= 1  # one channel of one pixel off by a level: a colour image
    with Image.open(write_photo_atomic(tmp_path / "c.png", almost)) as img:
        assert img.mode == "RGB"
    rgb_profile = b"\0" * 16 + b"RGB " + b"\0" * 108
    with Image.open(write_photo_atomic(tmp_path / "p.png", grey, icc_profile=rgb_profile)) as img:
        assert img.mode == "RGB"  # an RGB profile describes three channels


def test_failed_write_leaves_target_and_no_temp(tmp_path, monkeypatch):
    out = write_photo_atomic(tmp_path / "keep.png", _rgb())
    before = out.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_photo_atomic(out, _rgb(seed=5))
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["keep.png"]


def test_write_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"expected rgb as a \(H, W, 3\) uint8 array, got \(4, 4\) uint8"):
        write_photo_atomic(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="unsupported image suffix '.gif'"):
        write_photo_atomic(tmp_path / "a.gif", _rgb())
    with pytest.raises(ValueError, match="quality"):
        write_photo_atomic(tmp_path / "a.jpg", _rgb(), quality=0)
    with pytest.raises(ValueError, match="expected alpha"):
        write_photo_atomic(tmp_path / "a.png", _rgb(), alpha=np.zeros((3, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_format_suffix_helpers():
    assert format_for_suffix(".JPG") == format_for_suffix("jpeg") == "JPEG"
    assert format_for_suffix("tiff") == "TIFF" and format_for_suffix(".webp") == "WEBP"
    assert suffix_for_format("JPEG") == ".jpg" and suffix_for_format("png") == ".png"
    assert {format_for_suffix(s) for s in IMAGE_EXTENSIONS} == {"JPEG", "PNG", "BMP", "TIFF", "WEBP"}
    assert all(format_for_suffix(suffix_for_format(format_for_suffix(s))) == format_for_suffix(s)
               for s in IMAGE_EXTENSIONS)
    with pytest.raises(ValueError, match="unsupported image format 'GIF'"):
        suffix_for_format("GIF")


# ----------------------------------------------------------------------------- inputs


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "photos"
    for rel in ["b.png", "a.JPG", "notes.txt", ".hidden.jpg", "sub/c.jpg", "sub/deeper/d.webp",
                ".git/e.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


def _rel(files):
    return [f.relative.as_posix() for f in files]


def test_collect_folder_and_recursive(tree):
    files, errors = collect_inputs([str(tree)])
    assert _rel(files) == ["a.JPG", "b.png"] and errors == []
    assert files[0].path == tree / "a.JPG"
    files, errors = collect_inputs([str(tree)], recursive=True)
    assert _rel(files) == ["a.JPG", "b.png", "sub/c.jpg", "sub/deeper/d.webp"] and errors == []


def test_collect_file_glob_and_duplicates(tree, monkeypatch):
    files, errors = collect_inputs([str(tree / "sub" / "c.jpg"), str(tree / "notes.txt")])
    assert _rel(files) == ["c.jpg", "notes.txt"] and errors == []  # a named file is always taken
    monkeypatch.chdir(tree.parent)
    files, errors = collect_inputs(["photos/*/c.jpg", "photos/**/*.jpg", "photos/*"])
    assert _rel(files) == ["sub/c.jpg", "a.JPG", "b.png"] and errors == []
    assert files[0].path == Path("photos/sub/c.jpg")
    files, _ = collect_inputs(["photos/s*"], recursive=True)
    assert _rel(files) == ["sub/c.jpg", "sub/deeper/d.webp"]
    files, _ = collect_inputs([str(tree), str(tree / "b.png"), str(tree)])
    assert _rel(files) == ["a.JPG", "b.png"]
    files, _ = collect_inputs([str(tree / ".git")])  # a hidden folder named explicitly is listed
    assert _rel(files) == ["e.jpg"]


def test_collect_reports_inputs_that_match_nothing(tree):
    (tree / "docs").mkdir()
    (tree / "docs" / "readme.txt").write_text("no photos here")
    files, errors = collect_inputs([str(tree / "nope.jpg"), str(tree / "*.gif"), str(tree / "docs"),
                                    str(tree / "b.png")])
    assert _rel(files) == ["b.png"] and len(errors) == 3
    assert errors[0] == f"{tree / 'nope.jpg'}: no such file or folder"
    assert "no image files match" in errors[1] and "no image files in this folder" in errors[2]


def test_collect_skips_the_output_folder_inside_an_input_folder(tree, monkeypatch):
    """protect photos -o photos/protected --recursive, run again: its outputs are not inputs."""
    out = tree / "protected"
    (out / "sub").mkdir(parents=True)
    (out / "a.JPG").write_bytes(b"x")
    (out / "sub" / "c.jpg").write_bytes(b"x")
    expected = ["a.JPG", "b.png", "sub/c.jpg", "sub/deeper/d.webp"]
    files, errors = collect_inputs([str(tree)], recursive=True, exclude=(out,))
    assert _rel(files) == expected and errors == []
    monkeypatch.chdir(tree.parent)
    files, _ = collect_inputs(["photos/**/*.*"], recursive=True, exclude=(Path("photos/protected"),))
    assert sorted(_rel(files)) == expected
    # The output folder itself as the input, or a file in it named directly, is still taken (and refused
    # later as an output that would overwrite its input).
    assert _rel(collect_inputs([str(out)], exclude=(out,))[0]) == ["a.JPG"]
    assert _rel(collect_inputs([str(out / "a.JPG")], exclude=(out,))[0]) == ["a.JPG"]


def test_collect_skips_earlier_output_folders_when_asked(tree, monkeypatch):
    """protect photos -o photos/prot2 --recursive after a run into photos/protected: the outputs of the earlier
    run (a folder holding OUTPUT_RECORDS) are not inputs either, however they are reached."""
    earlier = tree / "protected"
    (earlier / OUTPUT_RECORDS).mkdir(parents=True)
    (earlier / "sub").mkdir()
    (earlier / "a.JPG").write_bytes(b"x")
    (earlier / "sub" / "c.jpg").write_bytes(b"x")
    (tree / "sub" / "deeper" / OUTPUT_RECORDS).mkdir(parents=True)  # a deeper output folder, its files skipped too
    expected = ["a.JPG", "b.png", "sub/c.jpg"]
    files, errors = collect_inputs([str(tree)], recursive=True, skip_output_folders=True)
    assert _rel(files) == expected and errors == []
    assert len(collect_inputs([str(tree)], recursive=True)[0]) == 6  # not asked: they are listed
    monkeypatch.chdir(tree.parent)
    for pattern in ("photos/**/*.*", "photos/*/*.jpg", "photos/*/*/*.webp"):
        files, _ = collect_inputs([pattern], recursive=True, skip_output_folders=True)
        assert not any(f.relative.parts[0] == "protected" or "deeper" in f.relative.parts for f in files), pattern
    files, _ = collect_inputs(["photos/p*"], recursive=True, skip_output_folders=True)
    assert files == []
    # An output folder given as the input itself is still listed (its own output folders below it are not).
    files, _ = collect_inputs([str(earlier)], recursive=True, skip_output_folders=True)
    assert _rel(files) == ["a.JPG", "sub/c.jpg"]
    assert is_output_folder(earlier) and not is_output_folder(tree)


def test_collect_pattern_matches_outside_its_base_stay_relative(tmp_path, monkeypatch):
    """'*/../../victim/*.jpg' matches outside the pattern's base folder: its relative path has no '..',
    so an output path built from it stays inside the output folder."""
    (tmp_path / "work" / "a").mkdir(parents=True)
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "x.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path / "work")
    files, errors = collect_inputs(["*/../../victim/*.jpg"])
    assert errors == [] and _rel(files) == ["victim/x.jpg"]
    assert files[0].path.resolve() == (tmp_path / "victim" / "x.jpg").resolve()


def test_broken_links_loops_and_pipes_are_listed_and_refused_with_their_reason(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "loop.jpg").symlink_to("loop.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "album.jpg").mkdir()  # a folder named like an image is no input
    files, errors = collect_inputs([str(folder)])
    assert _rel(files) == ["gone.jpg", "loop.jpg", "pipe.jpg"] and errors == []
    reasons = {"loop.jpg": "symbolic link loop", "gone.jpg": "broken symbolic link", "pipe.jpg": "not a regular file"}
    for name, reason in reasons.items():
        with pytest.raises(ImageError, match=reason):
            read_photo(folder / name)  # returns at once: a pipe is never opened
    for name in ("loop.jpg", "gone.jpg"):  # named directly, reading them says why
        assert _rel(collect_inputs([str(folder / name)])[0]) == [name]
    assert collect_inputs([str(folder / "pipe.jpg")]) == ([], [f"{folder / 'pipe.jpg'}: not a regular file or folder"])
    files, errors = collect_inputs([str(folder / "album.jpg")])
    assert files == [] and errors == [f"{folder / 'album.jpg'}: no image files in this folder "
                                      "(subfolders are searched only when recursive)"]


def test_printable_keeps_a_file_name_on_one_line():
    assert printable("a\nb\u2028c\td\udcff.jpg") == "a\\nb\\u2028c\\td\\udcff.jpg"
    assert printable("café 写真.jpg") == "café 写真.jpg"


# ----------------------------------------------------------------------------- temporaries and claims


def _exited_pid() -> int:
    """The PID of a process that has ended (as a killed run's would be)."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    return child


def test_atomic_write_names_its_temporary_by_process_and_cleans_up_on_interrupt(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as f:
            f.write(b"half")
            names = os.listdir(tmp_path)
            raise KeyboardInterrupt
    assert any(n.startswith(".out.bin.advquery-") and n.endswith(".tmp") and f"-{os.getpid()}-" in n for n in names)
    assert os.listdir(tmp_path) == ["out.bin"] and target.read_bytes() == b"old"
    with atomic_write(target) as f:
        f.write(b"new")
    assert os.listdir(tmp_path) == ["out.bin"] and target.read_bytes() == b"new"


def _interrupted_at_each_line(block) -> Iterator[int]:
    """Run ``block()`` once for every k, with a KeyboardInterrupt raised at the k-th line that advquery.io runs,
    yielding k after each interrupted run, until a run completes. Ray cancels a task so: KeyboardInterrupt raised
    wherever its Python code is (not tried in the standard library's frames: tempfile, for one, holds a lock at some
    of its lines, which an interrupt there would never release)."""
    for k in itertools.count():
        lines = itertools.count()

        def interrupt_at_k(frame, event, arg):
            if event == "line" and frame.f_code.co_filename == io.__file__ and next(lines) == k:
                raise KeyboardInterrupt  # raised in the traced frame; the trace is then unset
            return interrupt_at_k

        sys.settrace(interrupt_at_k)
        try:
            block()
        except KeyboardInterrupt:
            pass
        else:
            return
        finally:
            sys.settrace(None)
        yield k


def test_an_interrupt_at_any_line_of_an_atomic_write_leaves_the_old_file_or_the_new_one_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def write():
        with atomic_write(target) as f:
            f.write(b"new")

    tried = 0
    for k in _interrupted_at_each_line(write):
        assert os.listdir(tmp_path) == ["out.bin"] and target.read_bytes() in (b"old", b"new"), k
        tried += 1
    assert tried > 5 and os.listdir(tmp_path) == ["out.bin"] and target.read_bytes() == b"new"


def test_an_interrupt_at_any_line_of_a_claim_leaves_it_free(tmp_path):
    target = tmp_path / "out.jpg"

    def hold():
        with claim(target) as ours:
            assert ours

    tried = 0
    for k in _interrupted_at_each_line(hold):
        with claim(target) as ours:  # not kept by a descriptor the interrupt left open
            assert ours, k
        remove_stale_temporaries(tmp_path)  # the claim's file, if the interrupt came before its removal
        assert os.listdir(tmp_path) == [], k
        tried += 1
    assert tried > 5 and os.listdir(tmp_path) == []


def test_stale_temporaries_of_ended_processes_are_removed_not_those_of_running_ones(tmp_path):
    dead = _exited_pid()
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / f".a.jpg.advquery-{dead}-x1y2.tmp", tmp_path / "sub" / f".b.png.advquery-{dead}-zz.tmp",
             tmp_path / ".c.jpg.advquery-claim"]  # a claim file nobody holds
    live = [tmp_path / f".d.jpg.advquery-{os.getpid()}-ab.tmp", tmp_path / "e.jpg", tmp_path / ".f.jpg.x.tmp"]
    for p in stale + live:
        p.write_bytes(b"x")
    with claim(tmp_path / "g.jpg") as ours:  # a claim held right now is not stale
        assert ours
        assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
        assert (tmp_path / ".g.jpg.advquery-claim").exists()
    assert all(p.exists() for p in live) and not any(p.exists() for p in stale)
    assert not (tmp_path / ".g.jpg.advquery-claim").exists()  # removed when the claim ends


def test_claim_is_exclusive_between_processes_and_released_when_its_holder_dies(tmp_path):
    target = tmp_path / "x.jpg"
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # hold the claim until killed
        with claim(target) as ours:
            os.write(ready_w, b"1" if ours else b"0")
            time.sleep(60)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        with claim(target) as ours:
            assert not ours  # another running process holds it
        assert (tmp_path / ".x.jpg.advquery-claim").exists()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    with claim(target) as ours:  # the killed holder's file is claimed again
        assert ours
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- tensors


def test_tensor_round_trip():
    x = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    t = to_tensor(x)
    assert t.shape == (1, 3, 16, 16) and t.dtype == torch.float32 and t.is_contiguous()
    assert float(t.min()) == 0.0 and float(t.max()) == 1.0
    np.testing.assert_array_equal(to_uint8(t), x)
    np.testing.assert_array_equal(to_uint8(t[0].double()), x)
    ro = _rgb(5, 7)
    ro.setflags(write=False)
    np.testing.assert_array_equal(to_uint8(to_tensor(ro)), ro)


def test_to_uint8_rounds_and_clamps():
    t = torch.tensor([0.4, 0.6, 254.4, -3.0, 300.0]).div(255).view(1, 1, 5).expand(3, 1, 5)
    assert to_uint8(t)[0, :, 0].tolist() == [0, 1, 254, 0, 255]


def test_tensor_shape_errors():
    with pytest.raises(ValueError, match=r"got \(2, 3, 4, 4\) torch.float32"):
        to_uint8(torch.zeros(2, 3, 4, 4))
    for bad in (float("nan"), float("inf"), -float("inf")):  # one value among finite ones is enough
        t = torch.rand(3, 4, 4)
        t[1, 2, 3] = bad
        with pytest.raises(ValueError, match="got NaN or infinity"):
            to_uint8(t)


def test_to_uint8_leaves_its_input_alone():
    t = torch.rand(1, 3, 8, 8) * 1.2 - 0.1
    before = t.clone()
    to_uint8(t)
    assert torch.equal(t, before)
    with pytest.raises(ValueError, match=r"expected rgb as a \(H, W, 3\) uint8 array, got \(4, 4, 3\) float64"):
        to_tensor(np.zeros((4, 4, 3)))
