"""Small builders shared by several test modules."""
import importlib
import os
import re
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image

from advquery.cli.main import main
from advquery.io import read_photo, write_photo_atomic
from advquery.models import DescriptorModel, load_model
from advquery.models.precision import autocast_dtype

LEFTOVER = re.compile(r"\.advquery-(\d+-[^.]+\.tmp|claim)$")  # temporaries and claims of advquery


def lite0_for_counting() -> DescriptorModel:
    """Lite0 on the CPU with this machine's bfloat16 probe already made: where the probe runs (an empty cache, a CPU
    with native bfloat16) its passes would otherwise be counted by a test that counts the model's passes."""
    lite0 = load_model("efficientnet-lite0-gem", device="cpu")
    autocast_dtype("auto", lite0)
    return lite0


def bench_module(name: str):
    """A script of bench/ imported as a module (``bench`` on the path only while it imports)."""
    bench = str(Path(__file__).parents[1] / "bench")
    sys.path.insert(0, bench)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(bench)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one ``advquery`` command run in this process."""
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def leftovers(folder: Path) -> list[str]:
    """The temporary and claim files of advquery below ``folder``."""
    return [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names if LEFTOVER.search(n)]


def exif_with_gps(orientation: int) -> Image.Exif:
    """EXIF with an orientation, a camera make and a GPS block (what protect must strip)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (1.0, 2.0, 3.0)}
    return exif


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in grey levels."""
    return (a - b).abs() * 255


def on_grid(x: torch.Tensor) -> bool:
    """Whether every value is on the 8-bit grid k / 255."""
    return bool(((x * 255) - (x * 255).round()).abs().max() <= 1e-4)


def blob_scene(h: int = 128, w: int = 128, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 picture with SIFT keypoints: 24 bright or dark tinted Gaussian blobs in the top
    60 %, three coloured squares below, on a smooth bluish gradient (flat room for new keypoints)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    img = np.empty((h, w, 3))
    img[:] = (70, 100, 140)
    img += (xx / w * 30)[..., None]
    for _ in range(24):
        cx, cy, s = rng.uniform(8, w - 8), rng.uniform(8, 0.56 * h), rng.uniform(1.5, 4)
        colour = rng.choice([-1, 1]) * rng.uniform(60, 100) + rng.uniform(-25, 25, 3)
        img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[..., None] * colour
    for x0, y0, side, colour in [(0.08, 0.7, 0.09, (200, 170, 60)), (0.31, 0.74, 0.06, (30, 160, 60)),
                                 (0.47, 0.66, 0.12, (180, 60, 60))]:
        img[round(y0 * h):round((y0 + side) * h), round(x0 * w):round((x0 + side) * w)] = colour
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def replacing_folder(folder: Path, data_root: Path, stem: str) -> Path:
    """``folder`` (created) holding the UKBench photo ukbench00020, of another object than ukbench00000-3,
    saved as PNG under ``stem``: for ``eval --query-dir`` / ``--db-dir``, the file replacing ``stem``."""
    folder.mkdir()
    photo = read_photo(data_root / "ukbench-mini" / "jpg" / "ukbench00020.jpg").rgb
    write_photo_atomic(folder / f"{stem}.png", photo, format="PNG")
    return folder
