"""Every kind of bad input and fault a new user meets, through the command line.

For each: the exit code, exactly one line that names the file and says what is wrong, no
traceback, inputs byte-identical, and nothing stray left (no temporary or claim files, no output
for what failed). Photos are real UKBench photos (cropped small) or built from them; the working
size is tiny. Permission cases run in a child process that is not privileged (as root: in a user
namespace), the full disk in a child process with a small tmpfs of its own (a mount namespace);
each is skipped with the reason where the machine does not allow it.
"""
import hashlib
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from advquery.handcrafted.sift_he import Vocabulary
from advquery.io import printable, read_photo
from advquery.retrieval import DESCRIPTORS, IMAGES, MANIFEST, ImageIndex
from helpers import LEFTOVER, leftovers, run_cli

FAST = ["--size", "64", "--steps", "2", "--seed", "0", "--method", "cv-pire"]  # no tracker views: quick


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry below ``folder``: file contents by hash, links by target, other kinds by name."""
    found = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            p = Path(root, name)
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[str(p.relative_to(folder))] = "link " + os.readlink(p)
            elif stat.S_ISREG(mode):
                found[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() if mode & 0o400 else \
                    f"unreadable {p.stat().st_size}"
            elif not stat.S_ISDIR(mode):
                found[str(p.relative_to(folder))] = "special"
    return found


def _naming(stderr: str, path: Path | str) -> list[str]:
    return [line for line in stderr.splitlines() if printable(path) in line]


def _crop(ukbench_dir: Path, number: int, h: int = 72, w: int = 96) -> np.ndarray:
    """A small crop of a real UKBench photo."""
    return read_photo(ukbench_dir / f"ukbench{number:05d}.jpg").rgb[100:100 + h, 200:200 + w].copy()


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a decompression bomb), with valid checksums."""
    Image.new("RGB", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[12:29] = ihdr
    data[29:33] = zlib.crc32(bytes(ihdr)).to_bytes(4, "big")
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------- photos in one batch

# file -> the reason its one line must give
BAD_PHOTOS = {
    "empty.jpg": "empty file (0 bytes)",
    "notes.jpg": "not an image file",
    "cut.jpg": "truncated or corrupt image data",
    "cut.png": "truncated or corrupt image data",
    "anim.gif": "animated images are not supported (2 frames)",
    "anim.webp": "animated images are not supported (2 frames)",
    "anim.png": "animated images are not supported (2 frames)",  # APNG
    "dot.png": "image is too small (1 x 1 pixels",
    "bomb.png": "image is too large (10000000000 pixels, limit 100000000); possible decompression bomb",
    "float.tif": "unsupported colour mode F",
    "loop.jpg": "symbolic link loop",
    "gone.jpg": "broken symbolic link",
    "pipe.jpg": "not a regular file",
    "bad\nname.jpg": "not an image file",
}
# file -> (W, H) of its protected output: converted, rotated upright, or named unusually
ACCEPTED = {
    "cmyk.jpg": (96, 72), "grey16.png": (96, 72), "palette.png": (96, 72), "alpha.png": (96, 72),
    "grey.jpg": (96, 72), "album.jpg/inside.png": (96, 72),  # a folder named like an image is a folder
    "café 写真.jpg": (96, 72), "line\u2028sep.png": (96, 72), "new\nline.png": (96, 72),
    os.fsdecode(b"bytes\xff.png"): (96, 72),
    **{f"exif{o}.jpg": (96, 72) for o in range(1, 9)},  # stored 72 x 96 for the orientations that rotate
}


@pytest.fixture(scope="module")
def photo_batch(ukbench_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    inp = root / "in"
    (inp / "album.jpg").mkdir(parents=True)
    rgb = _crop(ukbench_dir, 0)
    (inp / "empty.jpg").write_bytes(b"")
    (inp / "notes.jpg").write_text("these are my notes, not a photo\n")
    (inp / "bad\nname.jpg").write_text("not a photo either\n")
    photo = (ukbench_dir / "ukbench00004.jpg").read_bytes()
    (inp / "cut.jpg").write_bytes(photo[: len(photo) // 2])
    Image.fromarray(rgb).save(root / "whole.png")
    (inp / "cut.png").write_bytes((root / "whole.png").read_bytes()[:-3000])
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    for name in ("anim.gif", "anim.webp", "anim.png"):
        frames[0].save(inp / name, save_all=True, append_images=frames[1:], duration=100)
    Image.new("RGB", (1, 1), "red").save(inp / "dot.png")
    _png_header(inp / "bomb.png", 100_000, 100_000)
    Image.fromarray(rgb[:, :, 0].astype(np.float32)).save(inp / "float.tif")
    (inp / "loop.jpg").symlink_to("loop.jpg")
    (inp / "gone.jpg").symlink_to(root / "deleted.jpg")
    os.mkfifo(inp / "pipe.jpg")
    Image.fromarray(rgb).convert("CMYK").save(inp / "cmyk.jpg", quality=95)
    Image.fromarray((rgb[:, :, 1].astype(np.uint16) * 257)).save(inp / "grey16.png")
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    palette.save(inp / "palette.png", transparency=0)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), "RGBA").save(inp / "alpha.png")
    Image.fromarray(rgb).convert("L").save(inp / "grey.jpg", quality=95)
    Image.fromarray(rgb).save(inp / "album.jpg" / "inside.png")
    for name in ("café 写真.jpg", "line\u2028sep.png", "new\nline.png", os.fsdecode(b"bytes\xff.png")):
        Image.fromarray(rgb).save(inp / name, quality=95)
    for o in range(1, 9):
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = o
        stored = rgb if o < 5 else np.ascontiguousarray(rgb.transpose(1, 0, 2))  # upright is 96 x 72
        Image.fromarray(stored).save(inp / f"exif{o}.jpg", quality=95, exif=exif)
    before = _snapshot(inp)
    out = root / "out"
    # A folder lists image extensions only (GIF is none), so the animated GIF is given as a file too.
    code, stdout, stderr = run_cli(["protect", str(inp), str(inp / "anim.gif"), "-o", str(out), "--recursive",
                                 "--report", str(root / "report.jsonl"), *FAST])
    return {"root": root, "in": inp, "out": out, "code": code, "stdout": stdout, "stderr": stderr,
            "before": before, "after": _snapshot(inp), "report": root / "report.jsonl"}


@pytest.mark.parametrize("name", list(BAD_PHOTOS))
def test_bad_photo_gets_one_line_naming_it(photo_batch, name):
    stderr = photo_batch["stderr"]
    assert photo_batch["code"] == 1 and "Traceback" not in stderr
    lines = _naming(stderr, photo_batch["in"] / name)
    assert len(lines) == 1, (name, stderr)
    assert lines[0].startswith(f"advquery: error: {printable(photo_batch['in'] / name)}: ") and BAD_PHOTOS[name] in lines[0]
    assert not (photo_batch["out"] / name).exists() and not (photo_batch["out"] / name).with_suffix(".png").exists()


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_unusual_photo_is_protected_without_a_word(photo_batch, name):
    assert not _naming(photo_batch["stderr"], photo_batch["in"] / name)
    assert read_photo(photo_batch["out"] / name).size == ACCEPTED[name]  # complete, readable, upright


def test_batch_leaves_inputs_as_they_were_and_nothing_stray(photo_batch):
    assert photo_batch["after"] == photo_batch["before"]
    assert leftovers(photo_batch["root"]) == []
    outputs = {str(p.relative_to(photo_batch["out"])) for p in photo_batch["out"].rglob("*")
               if p.is_file() and ".advquery" not in p.parts}
    assert len(outputs) == len(ACCEPTED)  # one output per accepted photo, none for the bad ones
    lines = [json.loads(line) for line in photo_batch["report"].read_text().splitlines()]
    assert sorted(r["status"] for r in lines) == ["failed"] * len(BAD_PHOTOS) + ["protected"] * len(ACCEPTED)
    assert f"protected {len(ACCEPTED)}, skipped 0 existing (use --overwrite), failed {len(BAD_PHOTOS)}" \
        in photo_batch["stderr"]


# ----------------------------------------------------------------------------------- one command per fault


@pytest.fixture(scope="module")
def index_dir(ukbench_dir, tmp_path_factory):
    """A real index of three UKBench photos at the tiny working size."""
    root = tmp_path_factory.mktemp("index")
    (root / "photos").mkdir()
    for i in (0, 1, 4):
        shutil.copy(ukbench_dir / f"ukbench{i:05d}.jpg", root / "photos" / f"{i}.jpg")
    code, _, stderr = run_cli(["index", "build", str(root / "photos"), "-o", str(root / "idx"), "--size", "64"])
    assert code == 0, stderr
    return root / "idx"


class _Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def _checkpoint(kind: str):
    def build(path: Path) -> None:
        if kind == "global":
            path.write_bytes(pickle.dumps({"meta": {}, "state_dict": _Evil()}))
        elif kind == "truncated":
            torch.save({"meta": {"architecture": "resnet50"}, "state_dict": {"w": torch.zeros(64)}}, path)
            path.write_bytes(path.read_bytes()[:200])
        elif kind == "text":
            path.write_text("not a checkpoint")
        else:
            torch.save([1, 2, 3], path)
    return build


def _gnd(content: bytes, name: str = "gnd_roxford5k-mini.pkl"):
    def build(root: Path) -> Path:
        (root / "roxford5k-mini" / "jpg").mkdir(parents=True)
        (root / "roxford5k-mini" / name).write_bytes(content)
        return root / "roxford5k-mini" / name
    return build


GOOD_GND = {"imlist": ["a"], "qimlist": ["a"], "gnd": [{"easy": [0], "hard": [], "junk": []}]}
DEEP = 100_000  # nesting that no recursive parser or repr survives


def _pickle_text(text: bytes) -> bytes:
    """A pickle BINUNICODE opcode holding ``text`` as it is (valid UTF-8 or not)."""
    return b"X" + len(text).to_bytes(4, "little") + text


# A ground-truth pickle whose image list is nested DEEP lists (built by opcodes: pickle.dumps would recurse).
DEEP_GND_PICKLE = (b"\x80\x02}(" + _pickle_text(b"imlist") + b"(" * DEEP + b"l" * DEEP + _pickle_text(b"qimlist") + b"]"
                   + _pickle_text(b"gnd") + b"]u.")


def _damaged_index(index_dir: Path, target: Path, how: str) -> Path:
    shutil.copytree(index_dir, target)
    meta = json.loads((target / MANIFEST).read_text())
    if how == "empty descriptors":
        (target / DESCRIPTORS).write_bytes(b"")
    elif how == "size big":
        (target / MANIFEST).write_text(json.dumps({**meta, "size": "big"}))
    elif how == "other model":
        (target / MANIFEST).write_text(json.dumps({**meta, "model": "efficientnet-lite1-gem"}))
    elif how == "no image list":
        (target / IMAGES).unlink()
    elif how == "manifest nested too deeply":
        (target / MANIFEST).write_text("[" * DEEP)
    elif how == "image list nested too deeply":
        lines = (target / IMAGES).read_text().splitlines(keepends=True)
        (target / IMAGES).write_text("".join(["[" * DEEP + "\n", *lines[1:]]))
    elif how == "NaN":
        index = ImageIndex.load(target)
        index.descriptors[1, :] = np.nan
        index.save(target)
    return target


def _photo(ukbench_dir: Path, folder: Path, name: str = "p.jpg", number: int = 8) -> Path:
    Image.fromarray(_crop(ukbench_dir, number)).save(folder / name, quality=95)
    return folder / name


def _cases():
    """name -> build(tmp inputs folder, tmp work folder, fixtures) -> (argv, file the line names, exit code, reason)."""
    cases = {}
    for kind, reason in (("global", "cannot load checkpoint"), ("truncated", "cannot load checkpoint"),
                         ("text", "cannot load checkpoint"), ("list", "not a cirtorch checkpoint")):
        def build(inp, work, fx, kind=kind, reason=reason):
            _checkpoint(kind)(inp / "model.pth")
            return (["protect", str(_photo(fx["ukbench"], inp)), "-o", str(work / "out"), "--model",
                     str(inp / "model.pth"), *FAST], inp / "model.pth", 2, reason)
        cases[f"checkpoint: {kind}"] = build
    for label, content, name, reason in (
            ("forbidden global", pickle.dumps({"imlist": [], "qimlist": [], "gnd": [_Evil()]}),
             "gnd_roxford5k-mini.pkl", "refusing to load global posix.system"),
            ("truncated pickle", pickle.dumps(GOOD_GND)[:25], "gnd_roxford5k-mini.pkl", "damaged pickle"),
            ("bad JSON", b'{"imlist": ["a", ', "gnd_roxford5k-mini.json", "not valid JSON"),
            ("easy not indices", pickle.dumps({**GOOD_GND, "gnd": [{"easy": ["zz"]}]}), "gnd_roxford5k-mini.pkl",
             "query 0: 'easy' must be a list of image indices, found ['zz']"),
            ("gnd entry not a dict", pickle.dumps({**GOOD_GND, "gnd": [1]}), "gnd_roxford5k-mini.pkl",
             "query 0: expected an object with index lists, found 1"),
            ("pickle of an unknown protocol", b"\x80\x09N.", "gnd_roxford5k-mini.pkl",
             "damaged pickle (ValueError: unsupported pickle protocol: 9)"),
            ("pickle with bad UTF-8", b"\x80\x04" + _pickle_text(b"\xff\xfe") + b".", "gnd_roxford5k-mini.pkl",
             "damaged pickle (UnicodeDecodeError: 'utf-8' codec can't decode"),
            ("pickle nested too deeply", DEEP_GND_PICKLE, "gnd_roxford5k-mini.pkl",
             "'imlist' must be a list of image names, found a list nested too deeply"),
            ("JSON nested too deeply", b"[" * DEEP, "gnd_roxford5k-mini.json", "not valid JSON (nested too deeply)")):
        def build(inp, work, fx, content=content, name=name, reason=reason):
            gnd = _gnd(content, name)(inp)
            return ["eval", "--dataset", "roxford5k-mini", "--data-root", str(inp), "--no-cache", "--size", "64"], gnd, 2, reason
        cases[f"ground truth: {label}"] = build
    for how, reason in (("empty descriptors", "damaged index: descriptors.npy cannot be read"),
                        ("size big", "damaged index: manifest.json: 'size' must be a positive integer, found 'big'"),
                        ("other model", "damaged index: manifest.json, images.jsonl and descriptors.npy do not match"),
                        ("no image list", "damaged index: images.jsonl cannot be read"),
                        ("manifest nested too deeply", "damaged index: manifest.json: not valid JSON (nested too deeply)"),
                        ("image list nested too deeply", "damaged index: images.jsonl cannot be read (a line nested too "
                                                         "deeply)"),
                        ("NaN", "damaged index: descriptors.npy: descriptors hold NaN or infinity")):
        for command in ("search", "verify"):
            def build(inp, work, fx, how=how, reason=reason, command=command):
                index = _damaged_index(fx["index"], inp / "idx", how)
                photo = _photo(fx["ukbench"], inp)
                argv = [command, str(photo), *([str(photo)] if command == "verify" else []), "--index", str(index)]
                return argv, index, 2, reason
            cases[f"{command} with index: {how}"] = build

    def cache(inp, work, fx):
        for i in range(4):
            (inp / "set" / f"g{i // 2}").mkdir(parents=True, exist_ok=True)
            shutil.copy(fx["ukbench"] / f"ukbench{i:05d}.jpg", inp / "set" / f"g{i // 2}" / f"{i}.jpg")
        argv = ["eval", "--dataset", str(inp / "set"), "--cache", str(work / "cache"), "--size", "64"]
        assert run_cli(argv)[0] == 0
        (entry,) = (work / "cache" / "descriptors").iterdir()
        np.save(entry, np.load(entry)[:, :7])  # of the wrong shape
        return argv, entry, 0, "damaged descriptor cache (rows of 7 float32, the system describes 1280 float32)"
    cases["eval with a damaged cache entry"] = cache

    for label, damage in (("empty", lambda data: b""), ("truncated", lambda data: data[:len(data) // 2])):
        def vocabulary_cache(inp, work, fx, damage=damage):
            for i in range(4):
                (inp / "set" / f"g{i // 2}").mkdir(parents=True, exist_ok=True)
                shutil.copy(fx["ukbench"] / f"ukbench{i:05d}.jpg", inp / "set" / f"g{i // 2}" / f"{i}.jpg")
            argv = ["eval", "--dataset", str(inp / "set"), "--features", "sift-he", "--vocab-size", "16",
                    "--cache", str(work / "cache"), "--size", "64"]
            assert run_cli(argv)[0] == 0
            (entry,) = (work / "cache" / "vocabularies").iterdir()
            entry.write_bytes(damage(entry.read_bytes()))
            return argv, entry, 0, "not a readable SIFT-HE vocabulary"
        cases[f"eval with a {label} vocabulary cache entry"] = vocabulary_cache

    for label, reason in (("truncated", "not a readable SIFT-HE vocabulary (File is not a zip file)"),
                          ("settings a list", "its settings are not a JSON object: [1, 2]"),
                          ("an array file", "a single array (.npy), not an archive of arrays (.npz)")):
        def bad_vocabulary(inp, work, fx, label=label, reason=reason):
            vocab = inp / "vocab.npz"
            rng = np.random.default_rng(0)
            Vocabulary.train([rng.integers(0, 256, (200, 128)).astype(np.uint8)], words=4).save(vocab)
            if label == "truncated":
                vocab.write_bytes(vocab.read_bytes()[:3000])
            elif label == "settings a list":
                arrays = dict(np.load(vocab))
                with vocab.open("wb") as f:
                    np.savez(f, **{**arrays, "settings": np.array(json.dumps([1, 2]))})
            else:
                with vocab.open("wb") as f:
                    np.save(f, np.zeros(3))
            return (["index", "build", str(_photo(fx["ukbench"], inp)), "-o", str(work / "idx"), "--features", "sift-he",
                     "--vocab", str(vocab)], vocab, 2, reason)
        cases[f"index build --vocab {label}"] = bad_vocabulary

    def folder_named_like_a_photo(inp, work, fx):
        (inp / "holiday.jpg").mkdir()
        return (["protect", str(inp / "holiday.jpg"), "-o", str(work / "out")], inp / "holiday.jpg", 2,
                "no image files in this folder (subfolders are searched only when recursive); no photos to protect")
    cases["protect a folder named like a photo"] = folder_named_like_a_photo

    def output_is_a_file(inp, work, fx):
        (work / "out").write_text("x")
        return ["protect", str(_photo(fx["ukbench"], inp)), "-o", str(work / "out")], work / "out", 2, "is a file"
    cases["protect -o a file"] = output_is_a_file

    def index_output_is_a_file(inp, work, fx):
        (work / "idx").write_text("x")
        return (["index", "build", str(_photo(fx["ukbench"], inp)), "-o", str(work / "idx")], work / "idx", 2,
                "is a file")
    cases["index build -o a file"] = index_output_is_a_file

    def report_to_full_disk(inp, work, fx):
        return (["protect", str(_photo(fx["ukbench"], inp)), "-o", str(work / "out"), "--report", "/dev/full", *FAST],
                "/dev/full", 1, "cannot write (No space left on device); the report stops here")
    cases["protect --report on a full disk"] = report_to_full_disk

    def eval_json_into_a_folder(inp, work, fx):
        (work / "summary.json").mkdir()
        return (["eval", "--dataset", "ukbench-mini", "--data-root", str(inp), "--json", str(work / "summary.json")],
                work / "summary.json", 2, "is a folder, not a file")
    cases["eval --json a folder"] = eval_json_into_a_folder

    for flag, name, linked in (("--json", "summary.json", False), ("--ranks", "ranks.npy", True)):
        def eval_output_a_pipe(inp, work, fx, flag=flag, name=name, linked=linked):
            os.mkfifo(work / "pipe")  # like /dev/stdout in a pipeline: replacing it would replace the device
            if linked:
                (work / name).symlink_to(work / "pipe")
            else:
                (work / "pipe").rename(work / name)
            return (["eval", "--dataset", "ukbench-mini", "--data-root", str(fx["ukbench"].parents[1]), flag,
                     str(work / name)], work / name, 2, "is not a regular file (a device, a pipe or a socket)")
        cases[f"eval {flag} a pipe{' through a link' if linked else ''}"] = eval_output_a_pipe

    def eval_json_a_link_loop(inp, work, fx):
        (work / "summary.json").symlink_to("summary.json")
        return (["eval", "--dataset", "ukbench-mini", "--data-root", str(fx["ukbench"].parents[1]), "--json",
                 str(work / "summary.json")], work / "summary.json", 2, "a symbolic link loop")
    cases["eval --json a symbolic link loop"] = eval_json_a_link_loop

    def bogus_device(inp, work, fx):
        return (["protect", str(_photo(fx["ukbench"], inp)), "-o", str(work / "out"), "--device", "cuda:99"],
                "cuda:99", 2, "is not available here; available: cpu")
    cases["--device not present"] = bogus_device
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_fault_gets_one_line_naming_the_file(case, tmp_path, ukbench_dir, index_dir):
    inp, work = tmp_path / "inputs", tmp_path / "work"
    inp.mkdir()
    work.mkdir()
    argv, named, expected_code, reason = CASES[case](inp, work, {"ukbench": ukbench_dir, "index": index_dir})
    before, work_before = _snapshot(inp), _snapshot(work)
    code, _, stderr = run_cli(argv)
    assert code == expected_code, stderr
    assert "Traceback" not in stderr
    prefix = "advquery: error: " if expected_code else "advquery: warning: "
    lines = [line for line in stderr.splitlines() if line.startswith(("advquery: error", "advquery: warning"))]
    assert len(lines) == 1 and lines[0].startswith(prefix) and _naming(lines[0], named) and reason in lines[0], stderr
    assert _snapshot(inp) == before
    assert leftovers(tmp_path) == []
    if expected_code == 2:  # refused before any work: nothing written
        assert _snapshot(work) == work_before


# ----------------------------------------------------------------------------------- child processes

DRIVER = r"""
import json, os, sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from advquery.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException as exc:
            import traceback
            code, err = -1, StringIO(traceback.format_exc())
    results.append({"code": code, "stderr": err.getvalue()})
left = [os.path.join(r, n) for r, _, names in os.walk(sys.argv[2]) for n in names] if len(sys.argv) > 2 else []
print(json.dumps({"results": results, "left": left}))
"""


def _in_child(prefix: list[str], runs: list[list[str]], shell_first: str | None = None,
              listed: Path | None = None) -> tuple[list[dict], list[str]]:
    """Run the commands ``runs`` in one child Python (after ``prefix``, e.g. unshare; ``shell_first`` before
    it): each one's exit code and stderr, and the files left under ``listed`` as the child sees them."""
    python = [sys.executable, "-c", DRIVER, json.dumps(runs), *([str(listed)] if listed else [])]
    command = prefix + (["sh", "-c", f'{shell_first} && exec "$@"', "sh"] + python if shell_first else python)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout.splitlines()[-1])
    return reply["results"], reply["left"]


def _unprivileged() -> list[str]:
    """How to run a child to which permission bits apply: directly, or as root in a user namespace."""
    if os.geteuid() != 0:
        return []
    probe = ["unshare", "--user", "--map-user=65534", "--map-group=65534", "true"]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("running as root, and this machine allows no user namespace (unshare --user) in which "
                    "permission bits would apply")
    return probe[:-1]


def test_permission_faults_get_one_line_naming_the_file(tmp_path, ukbench_dir):
    prefix = _unprivileged()
    inp = tmp_path / "inputs"
    inp.mkdir()
    good = _photo(ukbench_dir, inp, "good.jpg")
    locked = _photo(ukbench_dir, inp, "locked.jpg", 12)
    (inp / "closed").mkdir()
    _photo(ukbench_dir, inp / "closed", "inside.jpg")
    _checkpoint("list")(inp / "model.pth")
    (tmp_path / "readonly").mkdir()
    runs = {  # argv, the file named, exit code, reason
        "unreadable photo": ([str(good), str(locked), "-o", str(tmp_path / "out1"), *FAST], locked, 1, "permission denied"),
        "unreadable folder": ([str(inp / "closed"), "-o", str(tmp_path / "out2")], inp / "closed", 2,
                              "cannot list this folder (Permission denied)"),
        "unwritable -o": ([str(good), "-o", str(tmp_path / "readonly" / "out"), *FAST], tmp_path / "readonly" / "out", 2,
                          f"cannot write in {tmp_path / 'readonly'}"),
        "unwritable --report": ([str(good), "-o", str(tmp_path / "out3"), "--report",
                                 str(tmp_path / "readonly" / "r.jsonl"), *FAST], tmp_path / "readonly" / "r.jsonl", 2,
                                "cannot write in"),
        "unreadable checkpoint": ([str(good), "-o", str(tmp_path / "out4"), "--model", str(inp / "model.pth")],
                                  inp / "model.pth", 2, "Permission denied"),
    }
    for path, mode in ((locked, 0), (inp / "closed", 0), (tmp_path / "readonly", 0o555), (inp / "model.pth", 0)):
        path.chmod(mode)
    try:
        before = _snapshot(inp)
        results, _ = _in_child(prefix, [["protect", *argv] for argv, *_ in runs.values()])
        after = _snapshot(inp)
    finally:
        for path in (locked, inp / "closed", tmp_path / "readonly", inp / "model.pth"):
            path.chmod(0o755)
    for (name, (_, named, code, reason)), result in zip(runs.items(), results):
        stderr = result["stderr"]
        lines = [line for line in stderr.splitlines() if line.startswith("advquery: error")]
        assert result["code"] == code and "Traceback" not in stderr, (name, stderr)
        assert len(lines) == 1 and _naming(lines[0], named) and reason in lines[0], (name, stderr)
    assert after == before and leftovers(tmp_path) == []
    assert read_photo(tmp_path / "out1" / "good.jpg").size == (96, 72)  # the readable photo was still protected


def test_full_disk_gets_one_line_per_photo_and_leaves_nothing_half_written(tmp_path, ukbench_dir):
    probe = ["unshare", "--user", "--map-root-user", "--mount"]
    if shutil.which("unshare") is None or subprocess.run(
            [*probe, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"], capture_output=True).returncode:
        pytest.skip("this machine allows no private mount (unshare --mount, mount -t tmpfs) for a small full disk")
    inp, disk = tmp_path / "inputs", tmp_path / "disk"
    inp.mkdir()
    disk.mkdir()
    photos = [inp / f"{i}.jpg" for i in range(2)]
    for i, p in enumerate(photos):  # 320 x 240: a protected photo does not fit in 8 KiB
        Image.fromarray(read_photo(ukbench_dir / f"ukbench{4 * i:05d}.jpg").rgb[::2, ::2].copy()).save(p, quality=95)
    before = _snapshot(inp)
    (protect, index), left = _in_child(probe, [["protect", str(inp), "-o", str(disk / "out"), *FAST],
                                                ["index", "build", str(inp), "-o", str(disk / "idx"), "--size", "64"]],
                                       shell_first=f"mount -t tmpfs -o size=8k tmpfs {disk}", listed=disk)
    lines = [line for line in protect["stderr"].splitlines() if line.startswith("advquery: error")]
    assert protect["code"] == 1 and "Traceback" not in protect["stderr"]
    assert len(lines) == 2 and all(len(_naming(line, p)) == 1 for line, p in zip(lines, photos)), protect["stderr"]
    assert all("No space left on device" in line for line in lines)
    lines = [line for line in index["stderr"].splitlines() if line.startswith("advquery: error")]
    assert index["code"] == 2 and len(lines) == 1 and "No space left on device" in lines[0], index["stderr"]
    assert "Traceback" not in index["stderr"] and str(disk / "idx") in lines[0]
    assert [f for f in left if LEFTOVER.search(f) or not f.endswith(".json")] == [], left  # only records, if any
    assert _snapshot(inp) == before
