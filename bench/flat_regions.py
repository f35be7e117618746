"""What each preset does to flat regions (sky, walls), where SSIM hides a pattern: a zoomed crop for a person to judge.

Takes the photos the tracker benchmark protected (``bench/trackers.py``: JPEG q95 outputs of ``advquery protect``
at 1024 px, in ``bench/.work/trackers``) for one split, picks the photo and the window with the most flat, unclipped pixels
(``advquery.quality.flat_pixels``), and draws the window enlarged: the original, the original re-saved as JPEG q95
(what saving alone does), each preset's output, and below each its change amplified x10. Writes
``docs/flat_regions.png`` and ``bench/results/flat_regions_SPLIT.{json,md}`` (per photo and preset, the share of
flat pixels changed by more than 1 grey level, and the re-save's).

Run after the tracker benchmark: ``python bench/flat_regions.py [--split validation]``.
"""
import argparse
import io
import json
from pathlib import Path

import numpy as np
from common import densest_window, markdown_table, split_dataset, write_results
from PIL import Image
from trackers import setting_folder

from advquery.io import read_photo
from advquery.protection import STRENGTHS
from advquery.quality import amplified_difference, flat_pixels

FIGURE = Path(__file__).parents[1] / "docs" / "flat_regions.png"
WINDOW, ZOOM, GAIN = 96, 4, 10


def jpeg_resave(rgb: np.ndarray, quality: int = 95) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def flattest_window(rgb: np.ndarray) -> tuple[float, int, int]:
    """(share of flat pixels, top, left) of the WINDOW x WINDOW window with the most flat pixels that are not
    clipped (a blown-out white sky cannot show a change above it)."""
    unclipped = (rgb.max(axis=2) < 250) & (rgb.min(axis=2) > 5)
    return densest_window(flat_pixels(rgb) & unclipped, WINDOW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", default="validation")
    args = parser.parse_args()
    folders = {preset: setting_folder(preset) for preset in STRENGTHS}
    queries = [q for q in split_dataset(args.split).queries
               if all((f / f"{q.stem}.json").is_file() for f in folders.values())]
    if not queries:
        raise SystemExit(f"no {args.split} photo protected with every preset yet: run bench/trackers.py first")
    rows, records = [], {}
    for q in queries:
        records[q.stem] = {p: json.loads((f / f"{q.stem}.json").read_text()) for p, f in folders.items()}
        resave = next(iter(records[q.stem].values()))["flat_changed_resave"]
        rows.append([q.stem, round(100 * resave, 1),
                     *(round(100 * records[q.stem][p]["flat_changed"], 1) for p in STRENGTHS)])
    photo = max(queries, key=lambda q: flattest_window(read_photo(q).rgb)[0])
    original = read_photo(photo).rgb
    share, top, left = flattest_window(original)
    panels = {"original": original, "JPEG q95 re-save": jpeg_resave(original)}
    panels.update({p: read_photo(folders[p] / f"{photo.stem}.jpg").rgb for p in STRENGTHS})
    draw(panels, photo.stem, top, left, share, records[photo.stem])
    results = {"split": args.split, "photos": rows, "figure": {"photo": photo.stem, "top": top, "left": left,
                                                               "window": WINDOW, "flat_share": share}}
    markdown = (f"Split **{args.split}**, the photos `bench/trackers.py` protected (JPEG q95, 1024 px). Share (%) of "
                "each photo's flat pixels (7 x 7 luminance std below 2 grey levels) changed by more than 1 level. "
                f"Figure: `docs/flat_regions.png` ({photo.stem}, the {WINDOW} px window at ({left}, {top}) with "
                f"{100 * share:.0f} % flat pixels, enlarged x{ZOOM}).\n\n"
                + markdown_table(["photo", "re-save %", *(f"{p} %" for p in STRENGTHS)], rows))
    write_results(f"flat_regions_{args.split}", results, markdown)


def draw(panels: dict[str, np.ndarray], name: str, top: int, left: int, share: float, records: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    window = (slice(top, top + WINDOW), slice(left, left + WINDOW))
    fig, axes = plt.subplots(2, len(panels), figsize=(2.6 * len(panels), 5.6), constrained_layout=True)
    for column, (label, rgb) in enumerate(panels.items()):
        crop = rgb[window].repeat(ZOOM, 0).repeat(ZOOM, 1)
        change = amplified_difference(panels["original"][window], rgb[window], GAIN).repeat(ZOOM, 0).repeat(ZOOM, 1)
        flat = records[label]["flat_changed"] if label in records else (
            next(iter(records.values()))["flat_changed_resave"] if label != "original" else 0.0)
        axes[0, column].imshow(crop)
        axes[0, column].set_title(f"{label}\nflat pixels changed: {100 * flat:.0f} %", fontsize=9)
        axes[1, column].imshow(change)
        axes[1, column].set_title(f"change x{GAIN}", fontsize=9)
        for ax in axes[:, column]:
            ax.set_axis_off()
    fig.suptitle(f"{name}: the flattest {WINDOW} px window ({100 * share:.0f} % flat), enlarged x{ZOOM}", fontsize=10)
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
