"""The README's figure (docs/protection.png): what protection does to a real photo, and to what retrieval returns.

One validation query photo of roxford5k-mini (the split's first scored query unless ``--query``) and its protected
copies at each preset, as ``advquery protect`` writes them (1024 px working size, JPEG q95 output). Per row: the
photo, the change amplified ``--gain`` times around mid grey (:func:`advquery.quality.amplified_difference`), and
the five database photos a tracker's retrieval returns for the whole photo (EfficientNet-Lite0 GeM at 1024 px,
cosine similarity), framed green for photos of the same building (Medium positives), red for other places and grey
for junk.

Cheap when the tracker benchmark (``bench/trackers.py``) has run: it reuses its protected photos
(``bench/.work/trackers/<preset>-<digest>/``) and its cached database descriptors of the Lite0 GeM 1024 system
(``bench/.cache/trackers/*.npz``), and only computes what is missing (protecting a photo takes minutes on a CPU,
describing the database about ten).

Run: ``python bench/readme_figure.py [--query NAME] [--gain 10]``.
"""
import argparse
from pathlib import Path

import numpy as np
from common import CACHE, content_key, split_dataset
from PIL import Image
from trackers import protect_set

from advquery.io import read_photo
from advquery.protection import STRENGTHS
from advquery.quality import amplified_difference
from advquery.trackers import SuiteDescriber, system

OUTPUT = Path(__file__).parents[1] / "docs" / "protection.png"
SYSTEM = "lite0 gem 1024"
TOP = 5
THUMB = 320  # long side of a database thumbnail, pixels
FRAME = {"positive": "#1a9850", "other": "#d73027", "junk": "#999999"}


def database_descriptors(describer: SuiteDescriber, images: list[Path]) -> np.ndarray:
    """(n_db, D) descriptors of the database under the Lite0 GeM 1024 system: the tracker benchmark's cache when it
    holds them (same content key as ``trackers.database``), else described here and cached beside it."""
    s = system(SYSTEM)
    key = content_key(images, {"v": 1})
    for path in (CACHE / "trackers" / f"{key}.npz", CACHE / "readme_figure" / f"{key}.npz"):
        if path.is_file():
            with np.load(path) as f:
                if SYSTEM in f.files and len(f[SYSTEM]) == len(images):
                    return f[SYSTEM]
    print(f"describing the {len(images)} database photos (not cached by bench/trackers.py)", flush=True)
    rows = np.stack([describer.describe(read_photo(p).rgb, systems=[s])[s] for p in images])
    path = CACHE / "readme_figure" / f"{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{SYSTEM: rows})
    return rows


def thumbnail(path: Path, size: int = THUMB) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size), Image.BILINEAR)
        return np.asarray(img)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--query", help="query photo stem (default: the validation split's first scored query)")
    parser.add_argument("--gain", type=float, default=10, help="amplification of the change (default 10)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    ds = split_dataset("validation")
    stems = [q.stem for q in ds.queries]
    i = stems.index(args.query) if args.query else 0
    query = ds.queries[i]
    gnd = ds.ground_truth("medium")[i]
    positives, junk = set(gnd["ok"]), set(gnd["junk"])

    describer = SuiteDescriber([system(SYSTEM)])
    model = describer.models["efficientnet-lite0-gem"]
    db = database_descriptors(describer, ds.images)
    original = read_photo(query).rgb
    rows = [("original", None, original)]
    for preset in STRENGTHS:
        folder, records = protect_set(preset, [query], model)
        rows.append((preset, records[0], read_photo(folder / f"{query.stem}.jpg").rgb))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(rows), 2 + TOP, figsize=(17, 2.75 * len(rows)),
                             gridspec_kw={"width_ratios": [1.35, 1.35] + [1] * TOP})
    for r, (label, record, rgb) in enumerate(rows):
        v = describer.describe(rgb, systems=[system(SYSTEM)])[system(SYSTEM)]
        scores = db @ v
        best = np.argsort(-scores, kind="stable")[:TOP]
        ax = axes[r, 0]
        ax.imshow(rgb)
        if record is None:
            ax.set_ylabel("original", fontsize=12)
        else:
            ax.set_ylabel(f"{label}\nSSIM {record['ssim']:.3f}", fontsize=12)
        ax = axes[r, 1]
        if record is None:
            ax.imshow(np.full_like(rgb, 128))
            ax.text(0.5, 0.5, "unchanged", ha="center", va="center", transform=ax.transAxes, fontsize=11)
        else:
            ax.imshow(amplified_difference(original, rgb, args.gain), interpolation="nearest")
        if r == 0:
            axes[r, 0].set_title("photo", fontsize=12)
            axes[r, 1].set_title(f"change x{args.gain:g} (grey: none)", fontsize=12)
        for k, j in enumerate(best):
            ax = axes[r, 2 + k]
            kind = "positive" if j in positives else "junk" if j in junk else "other"
            thumb = thumbnail(ds.images[j])
            ax.imshow(thumb)
            h, w = thumb.shape[:2]
            ax.add_patch(Rectangle((0, 0), w - 1, h - 1, fill=False, edgecolor=FRAME[kind], linewidth=6))
            ax.set_xlabel(f"{scores[j]:.2f}", fontsize=12, color=FRAME[kind], labelpad=2)
            if r == 0:
                ax.set_title(f"retrieved {k + 1}", fontsize=12)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
    fig.suptitle(f"{query.stem} and what a tracker's retrieval returns for it: the top {TOP} of {len(ds.images)} "
                 f"database photos with their scores (EfficientNet-Lite0 GeM at 1024 px, whole photo)\n"
                 "green: the same building; red: another place; grey: junk", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=80)
    plt.close(fig)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
