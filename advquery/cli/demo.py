"""``advquery demo``: see retrieval at work, then fail, on sample photos that ship with scikit-image.

The "tracker's database" holds edited copies of each photo (downscaled, cropped,
re-compressed), as they would circulate online. Each original photo is used as a query and
finds its copies; then each photo is protected and used as a query again.
"""
import argparse
import io as _io
import tempfile
from pathlib import Path

import numpy as np
import skimage
from PIL import Image

from ..extraction import extract_descriptors
from ..io import read_photo, write_photo_atomic
from ..models import DEFAULT_MODEL, load_model
from ..protection import STRENGTHS, protect_photo
from ..retrieval import ImageIndex, Manifest
from .common import add_model_options, add_steps_option, positive_int, user_errors

COPIES_PER_PHOTO = 3  # see edited_copies
SAMPLES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")
# Unrelated images that fill the tracker's database, as a real one holds mostly other photos.
DISTRACTORS = ("camera.png", "coins.png", "moon.png", "page.png", "brick.png", "grass.png", "gravel.png", "retina.jpg",
               "ihc.png", "cell.png", "color.png", "clock_motion.png", "text.png")


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="index sample photos with edited copies and show what retrieval finds")
    demo.add_argument("-o", "--output", type=Path, help="keep the demo files in this folder (default: a temporary one)")
    demo.add_argument("-k", type=positive_int, default=3, help="results shown per query (default: 3)")
    demo.add_argument("--strength", choices=tuple(STRENGTHS), default="low", help="protection preset (default: low)")
    add_model_options(demo, size_default=512)
    add_steps_option(demo)
    demo.set_defaults(run=run_demo, model=DEFAULT_MODEL)


def edited_copies(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """What sharing does to a photo: half-size, central 80 % crop, JPEG quality 50."""
    img = Image.fromarray(rgb)
    w, h = img.size
    buf = _io.BytesIO()
    img.save(buf, "JPEG", quality=50)
    return {
        "resized": np.asarray(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
        "cropped": np.asarray(img.crop((w // 10, h // 10, w - w // 10, h - h // 10))),
        "jpeg50": np.asarray(Image.open(buf).convert("RGB")),
    }


def sample_photos(folder: Path, names: tuple[str, ...] = SAMPLES) -> list[Path]:
    """Copy scikit-image sample images into ``folder`` as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(skimage.__file__).parent / "data"
    out = []
    for name in names:
        target = folder / f"{Path(name).stem}.png"
        write_photo_atomic(target, read_photo(data / name).rgb, format="PNG")
        out.append(target)
    return out


def show_queries(index: ImageIndex, model, size: int, queries: list[Path], k: int, title: str) -> int:
    """Print the top-k results of each query; return how many edited copies were found in the top k."""
    found = 0
    descriptors = extract_descriptors(model, queries, size, progress=False).descriptors
    print(f"\n{title}")
    for query, hits in zip(queries, index.search(descriptors, k)):
        own = [p for p, _ in hits if p.name.startswith(query.stem + "_")]
        found += len(own)
        shown = ", ".join(f"{p.stem} ({s:.2f})" for p, s in hits)
        print(f"  {query.stem:<18} {len(own)}/{COPIES_PER_PHOTO} own copies in top {k}: {shown}")
    return found


@user_errors
def run_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="advquery-demo-") as tmp:
        root = args.output or Path(tmp)
        originals = sample_photos(root / "originals")
        shared = sample_photos(root / "shared", DISTRACTORS)
        for photo in originals:
            for kind, rgb in edited_copies(read_photo(photo).rgb).items():
                path = root / "shared" / f"{photo.stem}_{kind}.jpg"
                write_photo_atomic(path, rgb, format="JPEG", quality=90)
                shared.append(path)
        model = load_model(args.model, device=args.device)
        print(f"advquery demo: {len(originals)} photos; the tracker's database holds {len(shared)} images: "
              f"{COPIES_PER_PHOTO} edited copies of each photo and {len(DISTRACTORS)} unrelated images; "
              f"model {model.name}, working size {args.size} px")
        result = extract_descriptors(model, shared, args.size, progress=False)
        index = ImageIndex(result.descriptors, result.paths,
                           Manifest(model.name, args.size, (1.0,), result.descriptors.shape[1], len(result.paths)))
        found = show_queries(index, model, args.size, originals, args.k, "Original photos as queries:")
        protected = []
        for photo in originals:
            target = root / "protected" / photo.name
            record = protect_photo(read_photo(photo), target, model, "PNG", strength=args.strength, size=args.size,
                                   seed=0, steps=args.steps)
            print(f"  protected {photo.name}: SSIM {record.ssim:.4f}, PSNR {record.psnr:.1f} dB, "
                  f"max change {record.linf:.0f} grey levels, {record.seconds:.1f} s")
            protected.append(target)
        found_protected = show_queries(index, model, args.size, protected, args.k, "Protected photos as queries:")
        total = COPIES_PER_PHOTO * len(originals)
        print(f"\nRetrieval found {found} of {total} edited copies from the original photos, "
              f"and {found_protected} of {total} from the protected photos.")
        if args.output:
            print(f"Demo files kept in {args.output}")
    return 0
